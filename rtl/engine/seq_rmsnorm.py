"""RMSNORM: RMSNorm of ACT32 rows with a norm record (docs/isa.md; docs/numerics.md §6.3).

src0 holds ACT32 `[rows, cols]`, src1 the norm record: `int64 eps_scaled, int32 gain_shift,
int32 sqrt_n_mantissa, int32 sqrt_n_shift, int32 0`, then `int32 gain[cols]`
(compiler/scheduler.norm_record); dst gets ACT32 `[rows, cols]`, exactly
`sim/emulator_ops.rms_norm` (numerics `rmsnorm`). dst may be src0 itself (a row is buffered in
the unit before any of it is written) or apart from it.

Dataflow: `read[1]` fetches the record's 24-byte header first; its fields become the static
ports of one `RmsNormUnit` (`sfu_lanes` = L lanes). Then `read[0]` streams each row (one range
command per row) and `read[1]` the gains beside it (one command per row, the same bytes each
time), the lanes past the row's end zeroed so the row's maximum and sum of squares ignore them;
one ByteWriter command covers the whole dst.

Cycles from `start` to `done` with src0 and dst word-aligned, B = ceil(cols / L), R =
`RmsNormUnit.row_cycles(B, L)` (= 3B + 2T + 24, T the unit's tree stages), K = ceil(24 / 4L)
the header's chunks (record word-aligned): `rows · R + K + 12 + G` (`cycles`), G = 1 when the
gains (`src1 + 24`) do not start on a word boundary (their reader needs one more word before its
first full chunk), else 0. The header's chunks arrive in cycles 6 … 5 + K after start (check,
command, port read, the reader's FIFO and packer), the fields are checked in cycle 6 + K, the
row commands start the cycle after, and the first beat enters the unit 4 cycles later (port
read, FIFO, packer; + G). A row spans R cycles from its first input to its last output beat and
the next row enters the cycle after (rows do not overlap in the unit); `done` comes 2 cycles
after the last output beat (the writer's packer writes the final word).

`error` with `done` before any write: `cols = 0` (the emulator rejects it even when
`rows = 0`), `cols > max_cols` (the unit's row buffer holds `ceil(max_cols / L)` beats), dst
overlapping src0 without being equal to it, dst overlapping the record, a region past the 28-bit
byte addresses or dst past a 24-bit transfer, and a header field outside the unit's ports:
`eps_scaled` outside `[0, 2^40)`, `gain_shift` or `sqrt_n_shift` outside int8,
`sqrt_n_mantissa` outside `[0, 2^16)`. A gain outside the 18-bit range of docs/numerics.md §2 is
found as it streams: `error` comes with `done` at the end (dst written). `rows = 0` otherwise:
done in the check cycle, nothing accessed.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal

from llmfab.compiler.isa import Opcode
from llmfab.compiler.memory_plan import NORM_HEADER_BYTES
from llmfab.rtl.units.rmsnorm import EPS_BITS, RmsNormUnit
from llmfab.sim.vector_ops import GAMMA_BITS

from .geometry import ACT32_BYTES
from .seq_support import (
    LimitedSequencer,
    Region,
    act32_lanes,
    act32_streams,
    beyond_addresses,
    control,
    fits_signed,
    lane_values,
    lanes_fit,
    overlaps,
    row_commands,
    row_lanes,
    row_tracker,
    same_region,
    store_chunk,
    too_long,
)
from .sequencer import ROWS_BITS

FIXED_CYCLES = 12  # see the docstring's cycle formula
DEFAULT_MAX_COLS = 8192  # docs/numerics.md §6.3 sizes the 48-bit sum of squares for n <= 8192
SHIFT_BITS = 8  # gain_shift, sqrt_n_shift: int8 ports of the unit


class RmsNormSequencer(LimitedSequencer):
    """Executes RMSNORM (see the module docstring); rows of up to `limit` (max_cols) elements."""

    OPCODES = (Opcode.RMSNORM,)
    DEFAULT_LIMIT = DEFAULT_MAX_COLS

    @classmethod
    def cycles(cls, rows: int, cols: int, lanes: int, record_addr: int = 0) -> int:
        """Cycles from start to done (src0, dst and the record word-aligned, rows > 0; the word is
        `4 · lanes` bytes, as EngineGeometry makes it)."""
        beats = -(-cols // lanes)
        word = ACT32_BYTES * lanes
        header_chunks = -(-NORM_HEADER_BYTES // word)
        gains_offset = int((record_addr + NORM_HEADER_BYTES) % word != 0)
        return rows * RmsNormUnit.row_cycles(beats, lanes) + header_chunks + FIXED_CYCLES + gains_offset

    def elaborate(self, platform):
        m = Module()
        lanes = self.geometry.sfu_lanes
        chunk_bytes = ACT32_BYTES * lanes
        src, wgt, dst = act32_streams(m, self, 2)
        m.submodules.unit = unit = RmsNormUnit(lanes, -(-self.limit // lanes))

        inst, rows = self.inst, self.rows
        row_bytes = Signal(18)
        total = Signal(ROWS_BITS + 18)
        m.d.comb += [row_bytes.eq(inst.cols * ACT32_BYTES), total.eq(rows * row_bytes)]
        src_region = Region(inst.src0_buf, inst.src0_addr, total)
        dst_region = Region(inst.dst_buf, inst.dst_addr, total)
        record = Region(inst.src1_buf, inst.src1_addr, NORM_HEADER_BYTES + row_bytes)
        bad = ((inst.cols > self.limit) | (overlaps(dst_region, src_region) & ~same_region(dst_region, src_region))
               | overlaps(dst_region, record) | beyond_addresses(src_region) | beyond_addresses(dst_region)
               | beyond_addresses(record) | too_long(total))

        # the record header, then per row: the row and its gains
        gains_phase = Signal()
        go_header, go_rows = Signal(), Signal()
        row_commands(m, wgt.cmd, go_header | go_rows, inst.src1_buf,
                     Mux(go_rows, inst.src1_addr + NORM_HEADER_BYTES, inst.src1_addr), 0,
                     Mux(gains_phase, row_bytes, NORM_HEADER_BYTES), Mux(go_rows, rows, 1), "wgt")
        row_commands(m, src.cmd, go_rows, inst.src0_buf, inst.src0_addr, row_bytes, row_bytes, rows, "src")
        row_commands(m, dst.cmd, go_rows, inst.dst_buf, inst.dst_addr, 0, total, 1, "dst")
        with m.If(go_header):
            m.d.sync += gains_phase.eq(0)
        with m.Elif(go_rows):
            m.d.sync += gains_phase.eq(1)

        header = Signal(8 * NORM_HEADER_BYTES)
        header_index = Signal(range(-(-NORM_HEADER_BYTES // chunk_bytes) + 1))
        take_header = Signal()
        store_chunk(m, header, header_index, wgt.o.payload, take_header)
        eps, gain_shift, sqrt_m, sqrt_s = header[0:64], header[64:96], header[96:128], header[128:160]
        header_bad = ((eps[EPS_BITS:] != 0) | ~fits_signed(gain_shift, SHIFT_BITS) | (sqrt_m[16:] != 0)
                      | ~fits_signed(sqrt_s, SHIFT_BITS))
        m.d.comb += [unit.eps_scaled.eq(eps[:EPS_BITS]), unit.gain_shift.eq(gain_shift[:SHIFT_BITS]),
                     unit.sqrt_n_mantissa.eq(sqrt_m[:16]), unit.sqrt_n_shift.eq(sqrt_s[:SHIFT_BITS])]

        # rows and gains in lock-step into the unit
        x_chunk, g_chunk = src.o.payload, wgt.o.payload
        take = Signal()
        gain_bad = Signal()
        for lane, (x, gain) in enumerate(zip(act32_lanes(x_chunk, lanes), lane_values(g_chunk.data, 32, lanes))):
            m.d.comb += [unit.i.payload.x[lane].eq(x), unit.i.payload.gain[lane].eq(gain[:GAMMA_BITS])]
        m.d.comb += [unit.i.payload.last.eq(x_chunk.last), unit.i.valid.eq(gains_phase & src.o.valid & wgt.o.valid),
                     take.eq(unit.i.valid & unit.i.ready), src.o.ready.eq(take),
                     wgt.o.ready.eq(Mux(gains_phase, take, take_header))]
        with m.If(go_rows):
            m.d.sync += gain_bad.eq(0)
        with m.Elif(take & ~lanes_fit(g_chunk, GAMMA_BITS, lanes)):
            m.d.sync += gain_bad.eq(1)

        out = unit.o.payload
        on_last_row, final_taken = row_tracker(m, go_rows, dst.i.valid & dst.i.ready & out.last, rows)
        m.d.comb += [dst.i.valid.eq(unit.o.valid), unit.o.ready.eq(dst.i.ready),
                     dst.i.payload.data.eq(Cat(*(out.y[k] for k in range(lanes)))),
                     dst.i.payload.count.eq(row_lanes(out.last, inst.cols, lanes) * ACT32_BYTES),
                     dst.i.payload.last.eq(out.last & on_last_row)]

        def enter(m):
            m.d.comb += go_header.eq(1)
            m.next = "HEADER"

        def states(m, run, fail):
            with m.State("HEADER"):
                m.d.comb += take_header.eq(wgt.o.valid)
                with m.If(take_header & wgt.o.payload.last):
                    m.next = "FIELDS"
            with m.State("FIELDS"):
                with m.If(header_bad):
                    fail()
                with m.Else():
                    run()

        control(m, self, rejected=inst.cols == 0, empty=rows == 0, bad=bad, go=go_rows,
                finished=final_taken & dst.idle, late_error=gain_bad, prepare=(enter, states))
        return m
