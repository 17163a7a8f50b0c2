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
from amaranth.lib import wiring

from llmfab.compiler.isa import ActWidth, Opcode
from llmfab.compiler.memory_plan import A8_HEADER_BYTES
from llmfab.rtl.units.requantize import RequantizeUnit

from .bytestream import ByteWriter, WordReader
from .geometry import ACT32_BYTES
from .seq_support import Region, beyond_addresses, lane_values, overlaps, row_commands, valid_lanes_mask
from .sequencer import ROWS_BITS, Sequencer

FIXED_CYCLES = 7
HEADER_CYCLES = 1
DEFAULT_MAX_COLS = 16384  # the widest REQUANT row of the supported models is 11008 (Llama-2-7B's down_proj input)


def align8(value):
    return ((value + 7) >> 3) << 3


class RequantSequencer(Sequencer):
    """Executes REQUANT (see the module docstring); rows of up to `max_cols` elements."""

    OPCODES = (Opcode.REQUANT,)

    def __init__(self, geometry, max_cols: int = DEFAULT_MAX_COLS):
        self.max_cols = max_cols
        super().__init__(geometry)

    @classmethod
    def cycles(cls, rows: int, cols: int, lanes: int) -> int:
        """Cycles from start to done (word-aligned rows and dst, rows > 0)."""
        beats = -(-cols // lanes)
        return rows * (RequantizeUnit.row_cycles(beats, lanes) + HEADER_CYCLES) + FIXED_CYCLES

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        lanes = g.sfu_lanes
        chunk_bytes = ACT32_BYTES * lanes
        m.submodules.src = src = WordReader(g.buffers, chunk_bytes)
        m.submodules.dst = dst = ByteWriter(g.buffers, chunk_bytes)
        m.submodules.unit = unit = RequantizeUnit(lanes, -(-self.max_cols // lanes), widths=(8, 16))
        wiring.connect(m, src.port, wiring.flipped(self.read[0]))
        wiring.connect(m, dst.port, wiring.flipped(self.write))

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
        bad = (inst.cols > self.max_cols) | overlaps(dst_region, src_region) | beyond_addresses(src_region) | \
            beyond_addresses(dst_region)

        go = Signal()
        row_commands(m, src.cmd, go, inst.src0_buf, inst.src0_addr, row_in, row_in, rows, "src")
        row_commands(m, dst.cmd, go, inst.dst_buf, inst.dst_addr, stride_out, row_out, rows, "dst")

        chunk = src.o.payload
        valid = valid_lanes_mask(chunk.count, ACT32_BYTES, lanes)
        for lane, x in enumerate(lane_values(chunk.data, 32, lanes)):
            m.d.comb += unit.i.payload.x[lane].eq(Mux(valid[lane], x, 0))
        m.d.comb += [unit.i.payload.last.eq(chunk.last), unit.i.valid.eq(src.o.valid), src.o.ready.eq(unit.i.ready)]

        # per output row: the header chunk, then the codes; lanes past the row's end are not written
        out = unit.o.payload
        header_next = Signal()
        rows_out = Signal(ROWS_BITS)
        final_taken = Signal()
        last_lanes = (inst.cols - 1) % lanes + 1
        lanes_out = Mux(out.last, last_lanes, lanes)
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
        final = out.last & (rows_out == rows - 1)
        with m.If(go):
            m.d.sync += [header_next.eq(1), rows_out.eq(0), final_taken.eq(0)]
        with m.Elif(dst.i.valid & dst.i.ready):
            with m.If(header_next):
                m.d.sync += header_next.eq(0)
            with m.Elif(out.last):
                m.d.sync += [header_next.eq(1), rows_out.eq(rows_out + 1), final_taken.eq(final)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(rejected | ((rows != 0) & bad)):
                    m.d.comb += [self.done.eq(1), self.error.eq(1)]
                    m.next = "IDLE"
                with m.Elif(rows == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += go.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(final_taken & dst.idle):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
