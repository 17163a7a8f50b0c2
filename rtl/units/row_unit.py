"""Per-row (per-token) units: a row is buffered, reduced, turned into row constants, then replayed.

Requantization (§3), KV4 quantization (§6.4) and RMSNorm (§6.3) need a statistic of the whole
row (max |x|, min and max) before any element can be processed. `RowUnit` is their shared
skeleton. Its input stream carries beats of `lanes` elements with a `last` flag closing the row;
its output stream carries the processed beats, the row's constants and `last`. Phases:

1. collect — one input beat per cycle is written to an on-chip row buffer (`max_beats` deep)
   and fed to a reduction pipeline (a lane tree, registered every `TREE_LEVELS_PER_STAGE`
   levels, then the running statistic);
2. sweep (RMSNorm only) — the buffer is read once more, one beat per cycle, and a per-beat
   value (the sum of squares) is accumulated;
3. constants — a scalar pipeline (reciprocal, rsqrt, ...) turns the statistics into the row's
   constants, held in registers;
4. emit — the buffer is replayed through the per-element pipeline to the output stream, one
   beat per cycle under no back-pressure.

Cycles per row of `B` beats from its first input to its last output beat, without
back-pressure (`row_cycles(B, lanes)`): collect `B + T + 1` (T: reduction tree stages), sweep
`B + S + T + 1` (RMSNorm; S: sweep stages), constants `C + 1`, emit `B + 1 + A` (A: element
stages). The unit takes the next row's first beat in the following cycle.
The next row is accepted once the last output beat has left. Rows longer than `max_beats`
beats are outside the contract (the buffer address wraps).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, ShapeLike, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from llmfab.rtl.units.arith import absolute, maximum
from llmfab.rtl.units.pipeline import Lane, valid_chain

TREE_LEVELS_PER_STAGE = 2


def tree_reduce(lane: Lane, values: list, combine, name: str) -> tuple:
    """Combine `values` (tuples of Values, one tuple per lane) pairwise in a balanced tree,
    registering every `TREE_LEVELS_PER_STAGE` levels and at the end; returns the registered
    result tuple. `combine(a, b)` takes and returns tuples."""
    values = [tuple(v) for v in values]
    while True:
        for _ in range(TREE_LEVELS_PER_STAGE):
            if len(values) == 1:
                break
            pairs = [combine(values[k], values[k + 1]) for k in range(0, len(values) - 1, 2)]
            values = pairs + (values[-1:] if len(values) % 2 else [])
        registered = lane.stage(**{f"{name}{k}_{j}": part for k, v in enumerate(values) for j, part in enumerate(v)})
        values = [tuple(getattr(registered, f"{name}{k}_{j}") for j in range(len(v))) for k, v in enumerate(values)]
        if len(values) == 1:
            return values[0]


def tree_stages(lanes: int) -> int:
    """Register stages `tree_reduce` uses for `lanes` values."""
    levels = (lanes - 1).bit_length()
    return max(1, -(-levels // TREE_LEVELS_PER_STAGE))


class RowUnit(wiring.Component):
    """Skeleton of a per-row unit (see the module docstring). Subclasses define:

    - `input_fields()`, `output_fields()`: per-lane fields (name -> shape) of input/output beats;
      `row_fields()`: per-row constants repeated in every output beat; `config_fields()`: static
      input ports (held constant while a row is processed); `row_input_fields()`: per-row
      inputs taken from the row's first input beat (both reach the hooks as `config`);
    - `statistics(m, config)`: the running statistic registers,
      `reduce(lane, beat) -> tuple` (the beat's statistic through `tree_reduce`) and
      `accumulate(stats, reduced, first) -> list of assignments`;
    - optionally `sweep(lane, beat, stats, config) -> Value` (per-beat value summed in pass 2;
      `SWEEP_LATENCY` stages);
    - `constants(lane, stats, total, config) -> dict` (`CONSTANTS_LATENCY` stages);
    - `apply(lane, beat, constants, config) -> dict` per lane (`APPLY_LATENCY` stages).
    """

    CONSTANTS_LATENCY = 0
    APPLY_LATENCY = 0
    SWEEP_LATENCY = 0
    HAS_SWEEP = False
    SWEEP_SUM_BITS = 0

    def __init__(self, lanes: int, max_beats: int):
        if lanes < 1 or max_beats < 1:
            raise ValueError("a row unit needs at least one lane and one beat of buffer")
        self.lanes = lanes
        self.max_beats = max_beats
        per_lane = lambda fields: {n: data.ArrayLayout(s, lanes) for n, s in fields.items()}
        self.stored_layout = data.StructLayout(per_lane(self.input_fields()))
        in_layout = data.StructLayout({**per_lane(self.input_fields()), **self.row_input_fields(),
                                       "last": unsigned(1)})
        out_layout = data.StructLayout({**per_lane(self.output_fields()), **self.row_fields(), "last": unsigned(1)})
        members = {"i": In(stream.Signature(in_layout)), "o": Out(stream.Signature(out_layout))}
        members.update({name: In(shape) for name, shape in self.config_fields().items()})
        super().__init__(members)

    # -- hooks -----------------------------------------------------------------------------
    def input_fields(self) -> dict[str, ShapeLike]:
        raise NotImplementedError

    def output_fields(self) -> dict[str, ShapeLike]:
        raise NotImplementedError

    def row_fields(self) -> dict[str, ShapeLike]:
        return {}

    def config_fields(self) -> dict[str, ShapeLike]:
        return {}

    def row_input_fields(self) -> dict[str, ShapeLike]:
        """Per-row inputs carried by the input beats, taken from the row's first beat."""
        return {}

    @classmethod
    def reduction_latency(cls, lanes: int) -> int:
        return tree_stages(lanes)

    @classmethod
    def row_cycles(cls, beats: int, lanes: int) -> int:
        """Cycles from the first input beat to the last output beat of a row, no back-pressure."""
        sweep = beats + cls.SWEEP_LATENCY + tree_stages(lanes) + 1 if cls.HAS_SWEEP else 0
        collect = beats + cls.reduction_latency(lanes) + 1  # input beats, then the reduction drains
        emit = beats + 1 + cls.APPLY_LATENCY  # buffer read, then the element pipeline
        return collect + sweep + cls.CONSTANTS_LATENCY + 1 + emit

    # -- skeleton ------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        row_inputs = {name: Signal(shape, name=f"row_input_{name}") for name, shape in self.row_input_fields().items()}
        config = SimpleNamespace(**{name: getattr(self, name) for name in self.config_fields()}, **row_inputs)
        store = Memory(shape=self.stored_layout, depth=self.max_beats, init=[])
        m.submodules.row_buffer = store
        write = store.write_port()
        read = store.read_port()
        addr_bits = max(1, (self.max_beats - 1).bit_length())
        beats = Signal(addr_bits + 1, name="row_beats")
        countdown = Signal(range(256), name="countdown")
        issued = Signal(addr_bits + 1, name="issued")

        # collect: write the beat, reduce it
        accept = Signal(name="accept")
        first = Signal(init=1, name="first_beat")
        stats = self.statistics(m, config)
        reduce_lane = Lane(m, Const(1), "reduce")
        beat_in = SimpleNamespace(**{name: self.i.payload[name] for name in self.input_fields()})
        reduced = self.reduce(reduce_lane, beat_in)
        reduced_valid = valid_chain(m, Const(1), accept, reduce_lane.latency, "reduce")
        reduced_first = valid_chain(m, Const(1), accept & first, reduce_lane.latency, "reduce_first")
        if reduce_lane.latency != self.reduction_latency(self.lanes):
            raise AssertionError(f"{type(self).__name__}: reduction has {reduce_lane.latency} stages")
        with m.If(reduced_valid):
            m.d.sync += self.accumulate(stats, reduced, reduced_first)

        # sweep: one more pass over the buffer, summing a per-beat value
        total = Signal(self.SWEEP_SUM_BITS or 1, name="sweep_total")
        sweeping = Signal(name="sweeping")
        sweep_valid = Const(0)
        if self.HAS_SWEEP:
            sweep_lane = Lane(m, Const(1), "sweep")
            stored = SimpleNamespace(**{name: read.data[name] for name in self.input_fields()})
            value = self.sweep(sweep_lane, stored, stats, config)
            sweep_valid = valid_chain(m, Const(1), sweeping, sweep_lane.latency + 1, "sweep")
            if sweep_lane.latency != self.SWEEP_LATENCY + tree_stages(self.lanes):
                raise AssertionError(f"{type(self).__name__}: sweep has {sweep_lane.latency} stages")
            with m.If(sweep_valid):
                m.d.sync += total.eq(total + value)

        # constants: a scalar pipeline on the (now stable) statistics
        const_lane = Lane(m, Const(1), "row")
        const_values = self.constants(const_lane, stats, total, config)
        if const_lane.latency != self.CONSTANTS_LATENCY:
            raise AssertionError(f"{type(self).__name__}: constants have {const_lane.latency} stages")
        held = {name: Signal(Value.cast(v).shape(), name=f"row_{name}") for name, v in const_values.items()}
        held_ns = SimpleNamespace(**held)

        # emit: replay the buffer through the per-element pipeline
        advance = Signal(name="advance")
        emitting = Signal(name="emitting")
        issue = Signal(name="issue")
        result = Signal(self.o.payload.shape())
        last_flag = Signal(name="issue_last")
        stored = SimpleNamespace(**{name: read.data[name] for name in self.input_fields()})
        apply_lanes = []
        for index in range(self.lanes):
            lane = Lane(m, advance, f"lane{index}")
            element = SimpleNamespace(**{name: getattr(stored, name)[index] for name in self.input_fields()})
            outputs = self.apply(lane, element, held_ns, config)
            if lane.latency != self.APPLY_LATENCY:
                raise AssertionError(f"{type(self).__name__}: apply has {lane.latency} stages")
            apply_lanes.append(lane)
            for name, value in outputs.items():
                m.d.comb += result[name][index].eq(value)
        last_read = Signal(name="last_read")
        with m.If(advance):
            m.d.sync += last_read.eq(last_flag)
        last_out = valid_chain(m, advance, last_read, self.APPLY_LATENCY, "emit_last")
        out_valid = valid_chain(m, advance, issue, self.APPLY_LATENCY + 1, "emit")
        for name in self.row_fields():
            m.d.comb += result[name].eq(held[name])
        m.d.comb += [
            result["last"].eq(last_out),
            advance.eq(~out_valid | self.o.ready),
            issue.eq(emitting & (issued < beats)),
            last_flag.eq(issued == beats - 1),
            self.o.valid.eq(out_valid),
            self.o.payload.eq(result),
        ]

        # read port: sweep reads every cycle, emit reads when the pipeline advances
        m.d.comb += [
            read.addr.eq(issued),
            read.en.eq(sweeping | (emitting & advance)),
        ]
        with m.If(sweeping | (issue & advance)):
            m.d.sync += issued.eq(issued + 1)

        with m.FSM(name="phase"):
            with m.State("collect"):
                m.d.comb += [self.i.ready.eq(1), accept.eq(self.i.valid)]
                m.d.comb += [write.addr.eq(beats), write.data.eq(self._stored(beat_in)), write.en.eq(accept)]
                with m.If(accept):
                    m.d.sync += [beats.eq(beats + 1), first.eq(0)]
                    with m.If(first):
                        m.d.sync += [reg.eq(self.i.payload[name]) for name, reg in row_inputs.items()]
                    with m.If(self.i.payload.last):
                        m.d.sync += countdown.eq(self.reduction_latency(self.lanes))
                        m.next = "drain"
            with m.State("drain"):
                with m.If(countdown == 0):
                    m.d.sync += issued.eq(0)
                    if self.HAS_SWEEP:
                        m.d.sync += total.eq(0)
                        m.next = "sweep"
                    else:
                        m.d.sync += countdown.eq(self.CONSTANTS_LATENCY)
                        m.next = "constants"
                with m.Else():
                    m.d.sync += countdown.eq(countdown - 1)
            if self.HAS_SWEEP:
                with m.State("sweep"):
                    m.d.comb += sweeping.eq(issued < beats)
                    with m.If(issued == beats):
                        m.d.sync += countdown.eq(self.SWEEP_LATENCY + tree_stages(self.lanes) - 1)
                        m.next = "sweep_drain"
                with m.State("sweep_drain"):
                    with m.If(countdown == 0):
                        m.d.sync += countdown.eq(self.CONSTANTS_LATENCY)
                        m.next = "constants"
                    with m.Else():
                        m.d.sync += countdown.eq(countdown - 1)
            with m.State("constants"):
                with m.If(countdown == 0):
                    m.d.sync += [h.eq(const_values[name]) for name, h in held.items()]
                    m.d.sync += issued.eq(0)
                    m.next = "emit"
                with m.Else():
                    m.d.sync += countdown.eq(countdown - 1)
            with m.State("emit"):
                m.d.comb += emitting.eq(1)
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.d.sync += [beats.eq(0), first.eq(1)]
                    m.next = "collect"
        return m

    def _stored(self, beat: SimpleNamespace) -> Value:
        """A beat's input fields as one row of the buffer (fields in layout order)."""
        return Cat(*(Value.cast(getattr(beat, name)) for name, _ in self.stored_layout))


class PeakStatistic:
    """Mixin of the RowUnits reducing `max |x|` over the row's ACT32 field `x` (32-bit unsigned)."""

    def statistics(self, m, config):
        return Signal(unsigned(32), name="peak")

    def reduce(self, lane, beat):
        return tree_reduce(lane, [(absolute(x),) for x in beat.x], lambda a, b: (maximum(a[0], b[0]),), "peak")

    def accumulate(self, peak, reduced, first):
        return [peak.eq(Mux(first, reduced[0], maximum(peak, reduced[0])))]
