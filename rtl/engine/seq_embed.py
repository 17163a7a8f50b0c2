"""EMBED: dequantize gathered 8-bit embedding rows to ACT32 (docs/isa.md; docs/numerics.md §5.3).

src0 holds `rows` embedding rows, row r at `src0_addr + r · stride` (`stride` the instruction's
second immediate): `uint16 mantissa M, int16 row_shift, uint16 zero z, uint16 0`, then `uint8
codes[cols]`. dst gets ACT32 `[rows, cols]`, rows back to back:
`x = sat32(rshr(w · M, row_shift − 16))` with `w = c − z`, or `w = 2c − z` under flag `HALF_ZERO`
(z stored doubled), exactly `sim/emulator_ops.embed_rows` (numerics `signed_weights`, `embed`).

Dataflow: `read[1]` fetches each row's 8-byte header (one packed chunk per row), `read[0]` its
codes, `sfu_lanes` (L) codes per chunk; `EmbedUnit` (L lanes, 3 stages) dequantizes one chunk
per cycle with the row's header beside it; one ByteWriter command covers the whole dst.

Cycles from `start` to `done` with dst word-aligned: `rows · (ceil(cols / L) + 1) +
EmbedUnit.LATENCY + 6` (`cycles`). The first chunk enters the unit in cycle 6 after start
(check, command, port read, the codes reader's FIFO and packer); a row's chunks follow one per
cycle, with one cycle between rows (the reader's packer closes a row's transfer before it takes
the next), so the last enters in cycle `6 + rows · (ceil(cols / L) + 1) − 2`; its result leaves
the unit LATENCY cycles later and `done` comes 2 cycles after that (the writer's packer writes
the final word). Rows whose codes fit one buffer word can take a cycle more (a reader takes a
command every other cycle). `rows = 0` or `cols = 0`: done in the check cycle (cycle 1),
nothing accessed.

`error` (with `done`, before any access) when dst overlaps the source rows, or a region runs
past the 28-bit byte addresses or dst past a 24-bit transfer. Other flags are ignored, as the
emulator ignores them.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned

from llmfab.compiler.isa import Flag, Opcode
from llmfab.compiler.memory_plan import EMBED_HEADER_BYTES
from llmfab.rtl.units.arith import clamp, shift_round_saturate
from llmfab.rtl.units.pipeline import LaneUnit
from llmfab.sim.fixed_point import ACT32

from .bytestream import ByteWriter, WordReader
from .geometry import ACT32_BYTES
from .seq_support import (
    Region,
    attach,
    beyond_addresses,
    control,
    lane_values,
    overlaps,
    row_commands,
    row_tracker,
    side_channel,
    too_long,
)
from .sequencer import ROWS_BITS, Sequencer

FIXED_CYCLES = 6  # cycles before the first chunk enters the unit, see the docstring
# |w · M| < 2^32, so rshr by 34 or more gives 0 and a left shift of 32 or more saturates any
# nonzero value: the shift is clamped to +-SHIFT_LIMIT before the barrel shifters.
SHIFT_LIMIT = 40
SHIFT_BITS = 7


class EmbedUnit(LaneUnit):
    """`lanes` embedding codes per cycle -> ACT32 (numerics §5.3).

    In per lane: `code` (uint8), `zero` (uint16 as stored), `mantissa` (uint16), `row_shift`
    (int16), `half` (HALF_ZERO). Out: `y` (ACT32). Stages: `w = c − z` (or `2c − z`) and the
    clamped shift `row_shift − 16`; the 17 × 16-bit product `w · M`; the rounding shift with
    saturation. 1 DSP48E2 per lane.
    """

    LATENCY = 3

    def input_fields(self):
        return {"code": unsigned(8), "zero": unsigned(16), "mantissa": unsigned(16), "row_shift": signed(16),
                "half": unsigned(1)}

    def output_fields(self):
        return {"y": signed(ACT32.bits)}

    def datapath(self, lane, x):
        s1 = lane.stage(w=Mux(x.half, x.code << 1, x.code) - x.zero, mantissa=x.mantissa,
                        shift=clamp(x.row_shift - ACT32.frac, -SHIFT_LIMIT, SHIFT_LIMIT))
        s2 = lane.stage(product=s1.w * s1.mantissa, shift=s1.shift)
        return {"y": lane.stage(y=shift_round_saturate(s2.product, s2.shift, ACT32.bits)).y}


class EmbedSequencer(Sequencer):
    """Executes EMBED (see the module docstring)."""

    OPCODES = (Opcode.EMBED,)

    @classmethod
    def cycles(cls, rows: int, cols: int, lanes: int) -> int:
        """Cycles from start to done (word-aligned dst, rows > 0, cols > 0)."""
        return rows * (-(-cols // lanes) + 1) + EmbedUnit.LATENCY + FIXED_CYCLES

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        lanes = g.sfu_lanes
        out_bytes = ACT32_BYTES * lanes
        m.submodules.headers = headers = WordReader(g.buffers, EMBED_HEADER_BYTES)
        m.submodules.codes = codes = WordReader(g.buffers, lanes)
        m.submodules.dst = dst = ByteWriter(g.buffers, out_bytes)
        m.submodules.unit = unit = EmbedUnit(lanes)
        attach(m, self, codes, headers, dst)

        inst, rows = self.inst, self.rows
        out_total = Signal(ROWS_BITS + 18)
        src_extent = Signal(ROWS_BITS + 34)
        m.d.comb += [out_total.eq(rows * inst.cols * ACT32_BYTES),
                     src_extent.eq((rows - 1) * inst.stride + EMBED_HEADER_BYTES + inst.cols)]
        src = Region(inst.src0_buf, inst.src0_addr, src_extent)
        out = Region(inst.dst_buf, inst.dst_addr, out_total)
        bad = overlaps(out, src) | beyond_addresses(src) | beyond_addresses(out) | too_long(out_total)

        go = Signal()
        row_commands(m, headers.cmd, go, inst.src0_buf, inst.src0_addr, inst.stride, EMBED_HEADER_BYTES, rows, "hdr")
        row_commands(m, codes.cmd, go, inst.src0_buf, inst.src0_addr + EMBED_HEADER_BYTES, inst.stride, inst.cols,
                     rows, "codes")
        row_commands(m, dst.cmd, go, inst.dst_buf, inst.dst_addr, 0, out_total, 1, "dst")

        # a beat: one chunk of codes with its row's header; the header leaves with the row's last chunk
        header, chunk = headers.o.payload.data, codes.o.payload
        side, room = side_channel(m, unit, Cat(chunk.count, chunk.last), "beat")
        take = Signal()
        m.d.comb += [unit.i.valid.eq(codes.o.valid & headers.o.valid & room), take.eq(unit.i.valid & unit.i.ready),
                     codes.o.ready.eq(take), headers.o.ready.eq(take & chunk.last)]
        for lane, code in enumerate(lane_values(chunk.data, 8, lanes)):
            payload = unit.i.payload
            m.d.comb += [payload.code[lane].eq(code), payload.mantissa[lane].eq(header[0:16]),
                         payload.row_shift[lane].eq(header[16:32]), payload.zero[lane].eq(header[32:48]),
                         payload.half[lane].eq((inst.flags & Flag.HALF_ZERO) != 0)]

        # results to dst; the last chunk of the last row closes the transfer
        count, row_last = side[:len(chunk.count)], side[len(chunk.count)]
        on_last_row, final_taken = row_tracker(m, go, dst.i.valid & dst.i.ready & row_last, rows)
        m.d.comb += [dst.i.valid.eq(unit.o.valid), unit.o.ready.eq(dst.i.ready),
                     dst.i.payload.data.eq(Cat(*(unit.o.payload.y[k] for k in range(lanes)))),
                     dst.i.payload.count.eq(count * ACT32_BYTES), dst.i.payload.last.eq(row_last & on_last_row)]
        control(m, self, rejected=0, empty=(rows == 0) | (inst.cols == 0), bad=bad, go=go,
                finished=final_taken & dst.idle)
        return m
