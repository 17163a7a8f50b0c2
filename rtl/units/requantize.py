"""Per-token int8 (and int16, A16) requantization (docs/numerics.md §3, §3.1), bit-exact with
`llmfab.sim.numerics.requantize_per_token` (`bits` 8 and 16).

A row (one token's features) streams in as beats of `lanes` ACT32 values; `m = max|x|` is
reduced while the row is buffered; the row constants are `(r, e) = reciprocal(m)`,
`s0 = max(0, e - 15)`, `K = 127·r`, the code shift `16 + e - s0` and the token step
`A = rshr(u · 66052, 17)`, `E = e - 21` (u: the top 16 bits of m, shared with the reciprocal);
each element becomes `q = clamp(rshr(rshr(x, s0) · K, 16 + e - s0), -127, 127)`. An all-zero
row gives codes 0, `A = 0`, `E = -21`.

16-bit codes (§3.1) use `Q = 32767` in place of 127: `K = 32767·r` (31 bits, so the element
product is 18 × 31 bits, two DSP48E2), codes clamp to ±32767, `A = rshr(u · 65538, 17)` and
`E = e - 29`. `widths` chooses what a unit computes: `(8,)` (the default), `(16,)`, or `(8, 16)`,
which adds the static port `wide` selecting 16-bit codes for the row (REQUANT's mode, one unit
shared by both); `q` is as wide as the widest code. The stage counts are the same for both.

Latency per row (RowUnit): constants 9 stages (reciprocal 7, `K`/shifts and `u·66052`, round),
per element 3 stages (pre-shift, 18 × 23-bit product, rounding shift and clamp); cycles per row
of B beats without back-pressure: `RequantizeUnit.row_cycles(B, lanes)` = 2B + 15 + T (T tree
stages, 1 up to 4 lanes). DSP48E2 by construction: 1 per lane (x'·K; 2 with 16-bit codes) + 3 per unit (reciprocal 2,
step 1).
"""

from __future__ import annotations

from amaranth.hdl import Mux, signed, unsigned

from llmfab.rtl.units.arith import clamp, round_shift, round_shift_by
from llmfab.rtl.units.reciprocal import reciprocal_stages
from llmfab.rtl.units.row_unit import PeakStatistic, RowUnit
from llmfab.sim.fixed_point import ACT32
from llmfab.sim.linear_ops import ACT_BITS, STEP_RECIPROCALS, code_max

NARROW_BITS = 18  # |rshr(x, s0)| <= 2^16
STEP_EXPONENT_BASE = 13  # the step exponent is e - 13 - bits (§3.1)


class RequantizeUnit(PeakStatistic, RowUnit):
    """Per-token ACT32 -> int8 codes with the token's step.

    In: `x` (ACT32 per lane), `last`. Out: `q` (int8, or int16 when `widths` has 16, per lane),
    `scale_mantissa` (A, 16 bits), `scale_exponent` (E, signed), `last`. `max_beats` sizes the
    row buffer (row length / lanes); `widths` the code widths (module docstring).
    """

    CONSTANTS_LATENCY = 9
    APPLY_LATENCY = 3

    def __init__(self, lanes: int, max_beats: int, widths: tuple[int, ...] = (8,)):
        widths = tuple(sorted(set(widths)))
        if not widths or any(bits not in ACT_BITS for bits in widths):
            raise ValueError(f"code widths are among {ACT_BITS}, got {widths}")
        self.widths = widths
        super().__init__(lanes, max_beats)

    def input_fields(self):
        return {"x": signed(ACT32.bits)}

    def output_fields(self):
        return {"q": signed(max(self.widths))}

    def config_fields(self):
        return {"wide": unsigned(1)} if len(self.widths) > 1 else {}

    def _per_width(self, config, value):
        """`value(bits)` for the unit's code width (a Mux on `wide` when it has both)."""
        if len(self.widths) == 1:
            return value(self.widths[0])
        return Mux(config.wide, value(16), value(8))

    def row_fields(self):
        return {"scale_mantissa": unsigned(16), "scale_exponent": signed(6)}

    def constants(self, lane, peak, total, config):
        nonzero = peak != 0
        recip, carried = reciprocal_stages(lane, Mux(nonzero, peak, 1), {"nonzero": nonzero})
        pre_shift = Mux(recip.e > 15, recip.e - 15, 0)[:5]
        s8 = lane.stage(pre_shift=pre_shift, code_shift=(16 + recip.e - pre_shift)[:5],
                        k=self._per_width(config, lambda bits: (code_max(bits) * recip.r)[:bits + 15]),
                        step=recip.u * self._per_width(config, lambda bits: STEP_RECIPROCALS[bits]),
                        scale_exponent=self._per_width(
                            config, lambda bits: (recip.e - STEP_EXPONENT_BASE - bits)[:6].as_signed()),
                        nonzero=carried["nonzero"])
        s9 = lane.stage(pre_shift=s8.pre_shift, code_shift=s8.code_shift, k=s8.k, scale_exponent=s8.scale_exponent,
                        nonzero=s8.nonzero, scale_mantissa=Mux(s8.nonzero, round_shift(s8.step, 17), 0)[:16])
        return vars(s9)

    def apply(self, lane, element, row, config):
        s1 = lane.stage(narrow=round_shift_by(element.x, row.pre_shift)[:NARROW_BITS].as_signed())
        s2 = lane.stage(product=s1.narrow * row.k)
        shifted = round_shift_by(s2.product, row.code_shift)
        code = self._per_width(config, lambda bits: clamp(shifted, -code_max(bits), code_max(bits)))
        s3 = lane.stage(q=Mux(row.nonzero, code, 0)[:max(self.widths)].as_signed())
        return {"q": s3.q}
