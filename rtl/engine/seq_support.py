"""Pieces shared by the per-row and table sequencers (RMSNORM, REQUANT, EMBED, ROPE).

- `Region`, `overlaps`, `same_region`, `beyond_addresses`: the operand checks a sequencer makes
  before it touches a buffer. The emulator's handlers read every operand before they write, but a
  sequencer streams, so a destination that partly overlaps a source would read bytes it already
  wrote: the sequencers raise `error` for it (and for a region past the 28-bit byte addresses,
  which a range command would wrap) instead of computing something else.
- `row_commands`: a generator of one range command per row, `base + r · stride` (r = 0 … count−1).
- `store_chunk`: collects a packed transfer (a record header) into a register.
- `side_channel`: a FIFO beside a lane unit carrying per-beat values (byte counts, flags) past it.
- `lane_values`, `valid_lanes_mask`, `row_lanes`, `act32_lanes`, `lanes_fit`: the lanes of a
  packed chunk, which of them hold data, and whether their values fit a narrower port.
- `LimitedSequencer`, `attach`, `act32_streams`, `control`, `row_tracker`: the common frame of the
  sequencers (their build-time size limit, port wiring, the check-run-done FSM, the count of rows
  written).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import fifo, wiring

from .bytestream import ADDR_BITS, LENGTH_BITS, ByteWriter, WordReader
from .sequencer import ROWS_BITS, Sequencer


@dataclass
class Region:
    """Bytes `[addr, addr + nbytes)` of buffer `buf` (Amaranth values)."""

    buf: Value
    addr: Value
    nbytes: Value

    @property
    def end(self) -> Value:
        return self.addr + self.nbytes


def overlaps(a: Region, b: Region) -> Value:
    """The two regions share a byte."""
    return ((a.buf == b.buf) & (a.nbytes != 0) & (b.nbytes != 0) & (a.addr < b.end) & (b.addr < a.end))


def same_region(a: Region, b: Region) -> Value:
    return (a.buf == b.buf) & (a.addr == b.addr) & (a.nbytes == b.nbytes)


def beyond_addresses(region: Region) -> Value:
    """The region ends past the ISA's 28-bit byte addresses (a command's address would wrap)."""
    return (region.end >> ADDR_BITS) != 0


def too_long(nbytes: Value) -> Value:
    """A single transfer longer than a range command's 24-bit length."""
    return (nbytes >> LENGTH_BITS) != 0


def row_commands(m: Module, cmd, go: Value, buf: Value, base: Value, stride: Value, nbytes: Value, count: Value,
                 name: str) -> Value:
    """Drive the RangeCommand stream `cmd` with `count` commands `{buf, base + r·stride, nbytes}`,
    from the cycle after `go`; `buf`, `stride`, `nbytes` must hold until the last is taken.
    Returns a value that is high once every command has been taken (and before the first `go`)."""
    addr = Signal(ADDR_BITS, name=f"{name}_addr")
    left = Signal(ROWS_BITS, name=f"{name}_left")
    m.d.comb += [cmd.valid.eq(left != 0), cmd.payload.buf.eq(buf), cmd.payload.addr.eq(addr),
                 cmd.payload.nbytes.eq(nbytes)]
    with m.If(go):
        m.d.sync += [addr.eq(base), left.eq(count)]
    with m.Elif(cmd.valid & cmd.ready):
        m.d.sync += [addr.eq(addr + stride), left.eq(left - 1)]
    return left == 0


def store_chunk(m: Module, register: Signal, index: Signal, chunk, take: Value) -> None:
    """Place packed chunk `chunk` (a payload with `data`, `last`) at byte `index · chunk bytes` of
    `register` when `take`; `index` counts the transfer's chunks and restarts after `last`."""
    width = len(chunk.data)
    chunks = -(-len(register) // width)
    with m.If(take):
        with m.Switch(index):
            for k in range(chunks):
                with m.Case(k):
                    top = min(len(register), width * (k + 1))
                    m.d.sync += register[width * k:top].eq(chunk.data[:top - width * k])
        m.d.sync += index.eq(Mux(chunk.last, 0, index + 1))


def side_channel(m: Module, unit, value: Value, name: str) -> tuple[Value, Value]:
    """A FIFO beside the lane unit `unit` (a LaneUnit, which keeps its beats in order and drops
    none): `value` enters with every beat the unit takes and leaves with the beat it gives.
    Returns (the value beside the unit's output beat, room for another beat); the caller gates
    `unit.i.valid` with the room."""
    side = fifo.SyncFIFO(width=len(value), depth=unit.LATENCY + 2)
    m.submodules[f"{name}_side"] = side
    m.d.comb += [side.w_en.eq(unit.i.valid & unit.i.ready), side.w_data.eq(value),
                 side.r_en.eq(unit.o.valid & unit.o.ready)]
    return side.r_data, side.w_rdy


def lane_values(data: Value, bits: int, lanes: int) -> list[Value]:
    """The `lanes` fields of `bits` bits in `data`, lane 0 in the low bits."""
    return [data[bits * k:bits * (k + 1)] for k in range(lanes)]


def valid_lanes_mask(count_bytes: Value, lane_bytes: int, lanes: int) -> Value:
    """One bit per lane: the lane lies inside the chunk's first `count_bytes` bytes."""
    return Cat(*(count_bytes >= lane_bytes * (k + 1) for k in range(lanes)))


def fits_signed(value: Value, bits: int) -> Value:
    """A signed value lies in the `bits`-bit two's-complement range."""
    top = value[bits - 1:]
    return (top == 0) | top.all()


class LimitedSequencer(Sequencer):
    """A sequencer with one size its buffers are built for: `limit` (default `DEFAULT_LIMIT`), the
    longest row (RMSNORM, REQUANT) or head (ROPE) it executes; a larger operand raises `error`."""

    DEFAULT_LIMIT: int = 0

    def __init__(self, geometry, limit: int | None = None):
        self.limit = limit or self.DEFAULT_LIMIT
        super().__init__(geometry)


def attach(m: Module, sequencer: Sequencer, read0=None, read1=None, write=None) -> None:
    """Connect the readers' and the writer's ports to the sequencer's buffer ports (an unused port
    stays at rest)."""
    for port, user in ((sequencer.read[0], read0), (sequencer.read[1], read1), (sequencer.write, write)):
        if user is not None:
            wiring.connect(m, user.port, wiring.flipped(port))


def control(m: Module, sequencer: Sequencer, *, rejected: Value, empty: Value, bad: Value, go: Value,
            finished: Value, late_error: Value = 0, prepare=None) -> None:
    """The sequencers' FSM. `start` leads to CHECK, which answers `done` with `error` for `rejected`
    (whatever the row count) or, unless `empty`, for `bad`; `done` alone for `empty`; otherwise
    it starts the run (`go` for one cycle, then RUN until `finished`, where `done` comes with
    `late_error`). `prepare = (enter, states)` puts states between CHECK and RUN: `enter(m)` runs
    in CHECK instead of starting the run, `states(m, run, fail)` adds the states, which call
    `run()` to start the run or `fail()` to answer `error`."""
    def run():
        m.d.comb += go.eq(1)
        m.next = "RUN"

    def fail():
        m.d.comb += [sequencer.done.eq(1), sequencer.error.eq(1)]
        m.next = "IDLE"

    with m.FSM():
        with m.State("IDLE"):
            with m.If(sequencer.start):
                m.next = "CHECK"
        with m.State("CHECK"):
            with m.If(rejected | (~empty & bad)):
                fail()
            with m.Elif(empty):
                m.d.comb += sequencer.done.eq(1)
                m.next = "IDLE"
            with m.Else():
                if prepare is None:
                    run()
                else:
                    prepare[0](m)
        if prepare is not None:
            prepare[1](m, run, fail)
        with m.State("RUN"):
            with m.If(finished):
                m.d.comb += [sequencer.done.eq(1), sequencer.error.eq(late_error)]
                m.next = "IDLE"


def row_tracker(m: Module, go: Value, row_done: Value, rows: Value) -> tuple[Value, Signal]:
    """Counts the rows whose last chunk the writer took (`row_done`) since `go`. Returns (the
    writer is on the last row, the last row's last chunk was taken)."""
    count = Signal(ROWS_BITS, name="rows_out")
    final_taken = Signal(name="final_taken")
    on_last = count == rows - 1
    with m.If(go):
        m.d.sync += [count.eq(0), final_taken.eq(0)]
    with m.Elif(row_done):
        m.d.sync += count.eq(count + 1)
        with m.If(on_last):
            m.d.sync += final_taken.eq(1)
    return on_last, final_taken


def row_lanes(last: Value, cols: Value, lanes: int) -> Value:
    """Lanes holding data in a chunk of a row of `cols` elements: all but in its last chunk."""
    return Mux(last, (cols - 1) % lanes + 1, lanes)


def act32_lanes(chunk, lanes: int) -> list[Value]:
    """The ACT32 lanes of a packed chunk, 0 past its `count` bytes (a row statistic must not see
    what lies after the row's end)."""
    valid = valid_lanes_mask(chunk.count, 4, lanes)
    return [Mux(valid[k], x, 0) for k, x in enumerate(lane_values(chunk.data, 32, lanes))]


def lanes_fit(chunk, bits: int, lanes: int) -> Value:
    """Every int32 lane of a packed chunk within its `count` bytes lies in the `bits`-bit signed
    range (a table value or gain a narrower port of the unit can take)."""
    valid = valid_lanes_mask(chunk.count, 4, lanes)
    return Cat(*(~valid[k] | fits_signed(v, bits) for k, v in enumerate(lane_values(chunk.data, 32, lanes)))).all()


def act32_streams(m: Module, sequencer: Sequencer, readers: int) -> tuple:
    """`readers` WordReaders (on `read[0]`, then `read[1]`) and a ByteWriter (on `write`) moving
    chunks of `sfu_lanes` ACT32 elements, added to `m` as `src0`, `src1`, `dst`."""
    g = sequencer.geometry
    chunk_bytes = 4 * g.sfu_lanes
    streams = [WordReader(g.buffers, chunk_bytes) for _ in range(readers)]
    writer = ByteWriter(g.buffers, chunk_bytes)
    for name, user in zip(("src0", "src1"), streams):
        m.submodules[name] = user
    m.submodules.dst = writer
    attach(m, sequencer, *(streams + [None] * (2 - readers)), writer)
    return (*streams, writer)
