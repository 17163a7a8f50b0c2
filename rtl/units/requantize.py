"""Per-token int8 requantization (docs/numerics.md §3), bit-exact with
`llmfab.sim.numerics.requantize_per_token`.

A row (one token's features) streams in as beats of `lanes` ACT32 values; `m = max|x|` is
reduced while the row is buffered; the row constants are `(r, e) = reciprocal(m)`,
`s0 = max(0, e - 15)`, `K = 127·r`, the code shift `16 + e - s0` and the token step
`A = rshr(u · 66052, 17)`, `E = e - 21` (u: the top 16 bits of m, shared with the reciprocal);
each element becomes `q = clamp(rshr(rshr(x, s0) · K, 16 + e - s0), -127, 127)`. An all-zero
row gives codes 0, `A = 0`, `E = -21`.

Latency per row (RowUnit): constants 9 stages (reciprocal 7, `K`/shifts and `u·66052`, round),
per element 3 stages (pre-shift, 18 × 23-bit product, rounding shift and clamp); cycles per row
of B beats without back-pressure: `RequantizeUnit.row_cycles(B, lanes)` = 2B + 15 + T (T tree
stages, 1 up to 4 lanes). DSP48E2 by construction: 1 per lane (x'·K) + 3 per unit (reciprocal 2, step 1).
"""

from __future__ import annotations

from amaranth.hdl import Mux, signed, unsigned

from llmfab.rtl.units.arith import clamp, round_shift, round_shift_by
from llmfab.rtl.units.reciprocal import reciprocal_stages
from llmfab.rtl.units.row_unit import PeakStatistic, RowUnit
from llmfab.sim.fixed_point import ACT32, ACT_CODE_MAX
from llmfab.sim.linear_ops import INV127

NARROW_BITS = 18  # |rshr(x, s0)| <= 2^16
STEP_EXPONENT_OFFSET = 21


class RequantizeUnit(PeakStatistic, RowUnit):
    """Per-token ACT32 -> int8 codes with the token's step.

    In: `x` (ACT32 per lane), `last`. Out: `q` (int8 per lane), `scale_mantissa` (A, 16 bits),
    `scale_exponent` (E, signed), `last`. `max_beats` sizes the row buffer (row length / lanes).
    """

    CONSTANTS_LATENCY = 9
    APPLY_LATENCY = 3

    def input_fields(self):
        return {"x": signed(ACT32.bits)}

    def output_fields(self):
        return {"q": signed(8)}

    def row_fields(self):
        return {"scale_mantissa": unsigned(16), "scale_exponent": signed(6)}

    def constants(self, lane, peak, total, config):
        nonzero = peak != 0
        recip, carried = reciprocal_stages(lane, Mux(nonzero, peak, 1), {"nonzero": nonzero})
        pre_shift = Mux(recip.e > 15, recip.e - 15, 0)[:5]
        s8 = lane.stage(pre_shift=pre_shift, code_shift=(16 + recip.e - pre_shift)[:5],
                        k=(ACT_CODE_MAX * recip.r)[:23], step=recip.u * INV127,
                        scale_exponent=(recip.e - STEP_EXPONENT_OFFSET)[:6].as_signed(), nonzero=carried["nonzero"])
        s9 = lane.stage(pre_shift=s8.pre_shift, code_shift=s8.code_shift, k=s8.k, scale_exponent=s8.scale_exponent,
                        nonzero=s8.nonzero, scale_mantissa=Mux(s8.nonzero, round_shift(s8.step, 17), 0)[:16])
        return vars(s9)

    def apply(self, lane, element, row, config):
        s1 = lane.stage(narrow=round_shift_by(element.x, row.pre_shift)[:NARROW_BITS].as_signed())
        s2 = lane.stage(product=s1.narrow * row.k)
        code = clamp(round_shift_by(s2.product, row.code_shift), -ACT_CODE_MAX, ACT_CODE_MAX)
        s3 = lane.stage(q=Mux(row.nonzero, code, 0)[:8].as_signed())
        return {"q": s3.q}
