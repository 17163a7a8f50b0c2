"""Pieces shared by the per-row and table sequencers (RMSNORM, REQUANT, EMBED, ROPE).

- `Region`, `overlaps`, `same_region`, `beyond_addresses`: the operand checks a sequencer makes
  before it touches a buffer. The emulator's handlers read every operand before they write, but a
  sequencer streams, so a destination that partly overlaps a source would read bytes it already
  wrote: the sequencers raise `error` for it (and for a region past the 28-bit byte addresses,
  which a range command would wrap) instead of computing something else.
- `row_commands`: a generator of one range command per row, `base + r · stride` (r = 0 … count−1).
- `store_chunk`: collects a packed transfer (a record header) into a register.
- `side_channel`: a FIFO beside a lane unit carrying per-beat values (byte counts, flags) past it.
- `lane_values`, `valid_lanes_mask`: the lanes of a packed chunk and which of them hold data.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import fifo

from .bytestream import ADDR_BITS, LENGTH_BITS
from .sequencer import ROWS_BITS


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
