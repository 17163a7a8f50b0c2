"""REQUANT: per-token requantization of ACT32 rows to A8 or A16 rows (docs/isa.md; docs/numerics.md
§3, §3.1).

src0 holds ACT32 `[rows, cols]` (row stride `4 · cols`). Mode `A8` (0) writes A8 rows at dst:
`int32 scale_mantissa, int32 scale_exponent, int8 codes[cols]`, stride `8 + align8(cols)`; mode
`A16` (1) writes A16 rows: the same header, then `int16 codes[cols]`, stride `8 + align8(2 · cols)`.
The padding bytes after a row's codes are left as they are, as the emulator leaves them
(`sim/emulator_ops.requant`, `Emulator.write_a8`, `write_a16`; numerics `requantize_per_token`).

Dataflow: `read[0]` streams each row (one range command per row, `sfu_lanes` = L elements per
chunk, the lanes past the row's end zeroed so the row maximum ignores them) into one
`RequantizeUnit` with both code widths (the mode drives its `wide` port); each output row becomes
one ByteWriter command: the 8-byte header chunk (the unit repeats A and E in every beat), then
the code chunks, L (A8) or 2L (A16) bytes each.

Cycles from `start` to `done` with src0 and dst word-aligned, B = ceil(cols / L), R =
`RequantizeUnit.row_cycles(B, L)` (= 2B + T + 15, T the unit's tree stages):
`rows · (R + 1) + 7` (`cycles`). The first beat enters the unit in cycle 6 after start (check,
command, port read, the reader's FIFO and packer); a row spans R cycles from its first input
to its last output beat, plus 1 for the header chunk, which holds the unit's first output beat
for a cycle; the next row enters the cycle after (rows do not overlap in the unit); `done`
comes 2 cycles after the last output beat (the writer's packer writes the final word).
Unaligned operands can add a cycle or two (the writer's last partial word).

`error` (with `done`, before any access) for a mode other than A8 or A16, `cols = 0` (the
emulator rejects both even when `rows = 0`), `cols > max_cols` (the unit's row buffer holds
`ceil(max_cols / L)` beats), dst overlapping src0, or a region past the 28-bit byte addresses.
`rows = 0` otherwise: done in the check cycle, nothing accessed.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed

from llmfab.compiler.isa import ActWidth, Opcode
from llmfab.compiler.memory_plan import A8_HEADER_BYTES
from llmfab.rtl.units.requantize import RequantizeUnit

from .geometry import ACT32_BYTES
from .seq_support import (
    LimitedSequencer,
    Region,
    act32_lanes,
    act32_streams,
    beyond_addresses,
    control,
    overlaps,
    row_commands,
    row_lanes,
    row_tracker,
)

FIXED_CYCLES = 7
HEADER_CYCLES = 1
DEFAULT_MAX_COLS = 16384  # the widest REQUANT row of the supported models is 11008 (Llama-2-7B's down_proj input)


def align8(value):
    return ((value + 7) >> 3) << 3


class RequantSequencer(LimitedSequencer):
    """Executes REQUANT (see the module docstring); rows of up to `limit` (max_cols) elements."""

    OPCODES = (Opcode.REQUANT,)
    DEFAULT_LIMIT = DEFAULT_MAX_COLS

    @classmethod
    def cycles(cls, rows: int, cols: int, lanes: int) -> int:
        """Cycles from start to done (word-aligned rows and dst, rows > 0)."""
        beats = -(-cols // lanes)
        return rows * (RequantizeUnit.row_cycles(beats, lanes) + HEADER_CYCLES) + FIXED_CYCLES

    def elaborate(self, platform):
        m = Module()
        lanes = self.geometry.sfu_lanes
        src, dst = act32_streams(m, self, 1)
        m.submodules.unit = unit = RequantizeUnit(lanes, -(-self.limit // lanes), widths=(8, 16))

        inst, rows = self.inst, self.rows
        wide = inst.mode == ActWidth.A16
        row_in = Signal(18)
        code_bytes, row_out, stride_out = Signal(18), Signal(18), Signal(18)
        m.d.comb += [row_in.eq(inst.cols * ACT32_BYTES), code_bytes.eq(Mux(wide, inst.cols << 1, inst.cols)),
                     row_out.eq(A8_HEADER_BYTES + code_bytes), stride_out.eq(A8_HEADER_BYTES + align8(code_bytes)),
                     unit.wide.eq(wide)]
        src_region = Region(inst.src0_buf, inst.src0_addr, rows * row_in)
        dst_region = Region(inst.dst_buf, inst.dst_addr, (rows - 1) * stride_out + row_out)
        rejected = (inst.mode > ActWidth.A16) | (inst.cols == 0)
        bad = (inst.cols > self.limit) | overlaps(dst_region, src_region) | beyond_addresses(src_region) | \
            beyond_addresses(dst_region)

        go = Signal()
        row_commands(m, src.cmd, go, inst.src0_buf, inst.src0_addr, row_in, row_in, rows, "src")
        row_commands(m, dst.cmd, go, inst.dst_buf, inst.dst_addr, stride_out, row_out, rows, "dst")

        chunk = src.o.payload
        m.d.comb += [unit.i.payload.x[lane].eq(x) for lane, x in enumerate(act32_lanes(chunk, lanes))]
        m.d.comb += [unit.i.payload.last.eq(chunk.last), unit.i.valid.eq(src.o.valid), src.o.ready.eq(unit.i.ready)]

        # per output row: the header chunk, then the codes; lanes past the row's end are not written
        out = unit.o.payload
        header_next = Signal()
        lanes_out = row_lanes(out.last, inst.cols, lanes)
        codes8 = Cat(*(out.q[k][:8] for k in range(lanes)))
        codes16 = Cat(*(out.q[k] for k in range(lanes)))
        mantissa32, exponent32 = Signal(32), Signal(signed(32))
        m.d.comb += [mantissa32.eq(out.scale_mantissa), exponent32.eq(out.scale_exponent), dst.i.valid.eq(unit.o.valid)]
        with m.If(header_next):
            m.d.comb += [dst.i.payload.data.eq(Cat(mantissa32, exponent32)), dst.i.payload.count.eq(A8_HEADER_BYTES)]
        with m.Else():
            m.d.comb += [dst.i.payload.data.eq(Mux(wide, codes16, codes8)),
                         dst.i.payload.count.eq(Mux(wide, lanes_out << 1, lanes_out)),
                         dst.i.payload.last.eq(out.last), unit.o.ready.eq(dst.i.ready)]
        taken = dst.i.valid & dst.i.ready
        _, final_taken = row_tracker(m, go, taken & ~header_next & out.last, rows)
        with m.If(go):
            m.d.sync += header_next.eq(1)
        with m.Elif(taken):
            m.d.sync += header_next.eq(~header_next & out.last)
        control(m, self, rejected=rejected, empty=rows == 0, bad=bad, go=go, finished=final_taken & dst.idle)
        return m
