"""Fixed-latency pipelines with a stream interface and back-pressure.

A unit's datapath is written as a chain of register stages (`Lane.stage`), one chain per lane;
all stages of all lanes advance together. `StreamPipeline` wraps such a datapath between an
input and an output `amaranth.lib.stream` interface: a beat enters when the pipeline advances,
the pipeline advances whenever its last stage is empty or the consumer takes the output beat,
so the unit accepts one beat per cycle under no back-pressure and its latency is the number of
stages. The `ready` of the input is combinational from the `ready` of the output.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, ShapeLike, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


class Lane:
    """One chain of pipeline registers, clocked in `sync` and enabled by `advance`.

    `stage(name=value, ...)` registers the values (named `{prefix}_s{n}_{name}` in the Verilog)
    and returns them as attributes; `latency` counts the stages so far.
    """

    def __init__(self, m: Module, advance: Value, prefix: str):
        self.m = m
        self.advance = advance
        self.prefix = prefix
        self.latency = 0

    def stage(self, **values: Value) -> SimpleNamespace:
        """Register every value in the next stage; returns the registers by name."""
        self.latency += 1
        out = {}
        for name, value in values.items():
            value = Value.cast(value)
            reg = Signal(value.shape(), name=f"{self.prefix}_s{self.latency}_{name}")
            with self.m.If(self.advance):
                self.m.d.sync += reg.eq(value)
            out[name] = reg
        return SimpleNamespace(**out)

    def fork(self, prefix: str) -> "Lane":
        """A parallel chain starting at this chain's depth (e.g. one per element of a beat);
        bring it back with `join`."""
        lane = Lane(self.m, self.advance, f"{self.prefix}_{prefix}")
        lane.latency = self.latency
        return lane

    def join(self, lanes: list["Lane"]) -> None:
        """Continue after parallel chains of equal depth."""
        depths = {lane.latency for lane in lanes}
        if len(depths) != 1:
            raise AssertionError(f"forked chains of different depths {sorted(depths)}")
        self.latency = depths.pop()

    def carry(self, carried: dict[str, Value], **values: Value) -> tuple[SimpleNamespace, dict[str, Value]]:
        """A stage that also delays the `carried` side values; returns (new registers, carried registers)."""
        registers = self.stage(**values, **carried)
        return registers, {name: getattr(registers, name) for name in carried}


def valid_chain(m: Module, advance: Value, valid_in: Value, latency: int, prefix: str) -> Value:
    """A `latency`-deep shift register of valid bits advancing with `advance`; returns its last bit."""
    current = valid_in
    for index in range(latency):
        nxt = Signal(name=f"{prefix}_valid_s{index + 1}")
        with m.If(advance):
            m.d.sync += nxt.eq(current)
        current = nxt
    return current


def connect_stream_pipeline(m: Module, source, sink, build) -> int:
    """Wire a datapath between stream `source` (input) and stream `sink` (output).

    `build(advance)` creates the register stages (enabled by `advance`) from `source.payload` and
    returns `(latency, output_payload_value)`. Returns the latency. The input beat is accepted
    whenever the pipeline advances.
    """
    advance = Signal(name="advance")
    latency, payload = build(advance)
    if latency < 1:
        raise ValueError("a stream pipeline needs at least one register stage")
    out_valid = valid_chain(m, advance, source.valid, latency, "pipe")
    m.d.comb += [
        advance.eq(~out_valid | sink.ready),
        source.ready.eq(advance),
        sink.valid.eq(out_valid),
        sink.payload.eq(payload),
    ]
    return latency


class LaneUnit(wiring.Component):
    """Base of the elementwise units: `lanes` copies of one per-element datapath between a
    stream `i` of input elements and a stream `o` of results, one beat (all lanes) per cycle.

    Subclasses give `LATENCY` (register stages, checked when elaborated), the per-lane fields of
    the input and output beats (`input_fields()` / `output_fields()`: name -> shape), and
    `datapath(lane, inputs)` building one lane's stages and returning its results by field name.
    Verilog ports: `i__payload` / `o__payload` hold the fields in declaration order, lane 0 in the
    low bits of each field (see `amaranth.lib.data`), with `i__valid`, `i__ready`, `o__valid`,
    `o__ready`.
    """

    LATENCY: int = 0

    def __init__(self, lanes: int):
        if lanes < 1:
            raise ValueError("a unit needs at least one lane")
        self.lanes = lanes
        in_layout = data.StructLayout({name: data.ArrayLayout(shape, lanes)
                                       for name, shape in self.input_fields().items()})
        out_layout = data.StructLayout({name: data.ArrayLayout(shape, lanes)
                                        for name, shape in self.output_fields().items()})
        super().__init__({"i": In(stream.Signature(in_layout)), "o": Out(stream.Signature(out_layout))})

    def input_fields(self) -> dict[str, ShapeLike]:
        raise NotImplementedError

    def output_fields(self) -> dict[str, ShapeLike]:
        raise NotImplementedError

    def datapath(self, lane: Lane, inputs: SimpleNamespace) -> dict[str, Value]:
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()

        def build(advance):
            result = Signal(self.o.payload.shape())
            for index in range(self.lanes):
                lane = Lane(m, advance, f"lane{index}")
                inputs = SimpleNamespace(**{name: self.i.payload[name][index] for name in self.input_fields()})
                outputs = self.datapath(lane, inputs)
                if lane.latency != self.LATENCY:
                    raise AssertionError(f"{type(self).__name__}: datapath has {lane.latency} stages, "
                                         f"LATENCY says {self.LATENCY}")
                for name, value in outputs.items():
                    m.d.comb += result[name][index].eq(value)
            return self.LATENCY, result

        connect_stream_pipeline(m, self.i, self.o, build)
        return m
