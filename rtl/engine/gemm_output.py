"""The GEMM sequencer's output stage: accumulate the row sums and finish or store them.

For every output row n of a token group (the core's `result`: one 64-bit row sum per token
row) and every token row r of the group (r < `tokens`), one element per cycle:

1. `Y = row sum + accumulator` (`acc`: the int64 read from OUT, or 0 with `ACC_FIRST`), wrapping
   in 64 bits as the emulator's int64 addition;
2. with `ACC_LAST`: `y = sat32(rshr(Y · A, row_shift − E))` (rtl/units/mac_lanes.finish_stages)
   with the token's step `A · 2^E` and the row's shift (a byte per row from `shift_*`, a
   BitWindow on the tile's row shifts), written as ACT32 at `dst_base[r] + 4n`; a `Y` outside
   48 bits sets `overflow` (the emulator rejects it, docs/numerics.md §5.2);
3. without it: `Y` written as int64 at `acc_base[r] + 8n`.

Latency 1 + FINISH_STAGES cycles from taking an element to offering it to the writer.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.rtl.units.mac_lanes import ENGINE_ROW_SUM_BITS, FINISH_STAGES, finish_stages
from llmfab.rtl.units.pipeline import Lane
from llmfab.sim.linear_ops import ROW_ACCUMULATOR_BITS

from .bytestream import ADDR_BITS
from .gemm_core import FIELD_BITS
from .gemm_streams import element_layout
from .seq_support import fits_signed

ACT32_BYTES, INT64_BYTES = 4, 8
EXPONENT_BITS = 6  # E of the MAC's step (REQUANT gives E in [-29, 10])
LATENCY = 1 + FINISH_STAGES


class GemmOutput(wiring.Component):
    """See the module docstring. `tokens`: token rows per result.

    Members: `start` (a new token group: `cols` rows of `rows` token rows follow), `rows`,
    `cols`, `acc_first`, `acc_last`, `result` (stream of `tokens` row sums), `acc` (stream of
    int64), `shift_data`, `shift_fill`, `shift_pop` (the row-shift window), per token row
    `act_mantissa`, `act_exponent`, `dst_base`, `acc_base`, `o` (element stream to an
    ElementWriter), `busy` (elements left or in the pipeline), `overflow` (sticky), `clear`.
    """

    def __init__(self, tokens: int, shift_fill_bits: int):
        self.tokens = tokens
        array = lambda shape: data.ArrayLayout(shape, tokens)  # noqa: E731
        super().__init__({
            "start": In(1), "rows": In(range(tokens + 1)), "cols": In(FIELD_BITS), "acc_first": In(1),
            "acc_last": In(1),
            "result": In(stream.Signature(data.ArrayLayout(signed(ENGINE_ROW_SUM_BITS), tokens))),
            "acc": In(stream.Signature(64)),
            "shift_data": In(8), "shift_fill": In(shift_fill_bits), "shift_pop": Out(4),
            "act_mantissa": In(array(unsigned(16))), "act_exponent": In(array(signed(EXPONENT_BITS))),
            "dst_base": In(array(unsigned(ADDR_BITS))), "acc_base": In(array(unsigned(ADDR_BITS))),
            "o": Out(stream.Signature(element_layout())), "busy": Out(1), "overflow": Out(1), "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        token = Signal(range(self.tokens), name="token")
        col = Signal(FIELD_BITS, name="col")
        pending = Signal(name="pending")  # elements of the group not yet taken
        advance = Signal(name="advance")
        lane = Lane(m, advance, "out")
        last_token = token == self.rows - 1
        take = Signal(name="take")
        m.d.comb += take.eq(pending & advance & self.result.valid & (self.acc_first | self.acc.valid)
                            & (self.shift_fill >= 8))
        m.d.comb += [self.result.ready.eq(take & last_token), self.acc.ready.eq(take & ~self.acc_first),
                     self.shift_pop.eq(Mux(take & last_token, 8, 0))]
        with m.If(self.start):
            m.d.sync += [pending.eq((self.rows != 0) & (self.cols != 0)), token.eq(0), col.eq(0)]
        with m.Elif(take):
            m.d.sync += token.eq(Mux(last_token, 0, token + 1))
            with m.If(last_token):
                m.d.sync += col.eq(col + 1)
                with m.If(col == self.cols - 1):
                    m.d.sync += pending.eq(0)

        row_sum = self.result.payload[token]
        added = (row_sum + Mux(self.acc_first, 0, self.acc.payload.as_signed()))[:ENGINE_ROW_SUM_BITS].as_signed()
        address = Mux(self.acc_last, self.dst_base[token] + col * ACT32_BYTES, self.acc_base[token] + col * INT64_BYTES)
        carried = {"valid": take, "addr": address[:ADDR_BITS]}
        p1, carried = lane.carry(carried, total=added, mantissa=self.act_mantissa[token],
                                 exponent=self.act_exponent[token], shift=self.shift_data.as_signed())
        with m.If(self.clear):
            m.d.sync += self.overflow.eq(0)
        with m.Elif(advance & carried["valid"] & self.acc_last & ~fits_signed(p1.total, ROW_ACCUMULATOR_BITS)):
            m.d.sync += self.overflow.eq(1)
        carried["total"] = p1.total
        y, carried = finish_stages(lane, carried, p1.total[:ROW_ACCUMULATOR_BITS].as_signed(), p1.mantissa, p1.shift,
                                   p1.exponent)
        if lane.latency != LATENCY:
            raise AssertionError(f"GemmOutput: {lane.latency} stages, LATENCY says {LATENCY}")
        valid = carried["valid"]
        m.d.comb += [
            advance.eq(~valid | self.o.ready),
            self.o.valid.eq(valid),
            self.o.payload.addr.eq(carried["addr"]),
            self.o.payload.value.eq(Mux(self.acc_last, y.as_unsigned(), carried["total"].as_unsigned())),
            self.o.payload.wide.eq(~self.acc_last),
        ]
        inside = Signal(range(LATENCY + 2), name="inside")  # elements taken and not yet written
        m.d.sync += inside.eq(inside + take - (self.o.valid & self.o.ready))
        m.d.comb += self.busy.eq(pending | (inside != 0))
        return m
