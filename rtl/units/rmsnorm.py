"""RMSNorm (docs/numerics.md §6.3), bit-exact with `llmfab.sim.numerics.rmsnorm`.

Per token: `k = max(0, bitlen(max|x|) - 15)`, `x' = sat16(rshr(x, k))`,
`S = Σ x'^2 + rshr(EPS, 2k)` (48 bits), `(y, h) = rsqrt(max(S, 1))`, `c = rshr(y · SN, 16)`,
`out = sat32(rshr(x' · gain · c, gs + ss + h - 16))`. Because `x'` depends on the row's
maximum, the buffered row is read twice: once to sum the squares (the RowUnit sweep), once
to emit. The per-element gains stream in with `x` (and are buffered with it); the per-norm
constants `gain_shift` (gs), `sqrt_n_mantissa` (SN), `sqrt_n_shift` (ss) and `eps_scaled`
(EPS) are static input ports, as `llmfab.sim.numerics.prepare_norm` computes them.

Pipelines: sweep 3 stages + the sum tree (k, narrowing, squares); constants 13 stages (k,
ε term, max, rsqrt 8, `y · SN`, round); per element 4 stages (narrow, `x' · gain` 16 × 18,
`· c` 34 × 17, rounding shift and saturation). Cycles per row of B beats:
`RmsNormUnit.row_cycles(B, lanes)` = 3B + 24 + 2T (T tree stages). DSP48E2 by construction:
4 per lane (1 square, 1 for `x'·gain`, 2 for `·c`) + 4 per unit (rsqrt 3, `y·SN` 1).
"""

from __future__ import annotations

from amaranth.hdl import Mux, signed, unsigned

from llmfab.rtl.units.arith import bit_length, round_shift, round_shift_by, saturate, shift_round_saturate
from llmfab.rtl.units.row_unit import PeakStatistic, RowUnit, tree_reduce
from llmfab.rtl.units.rsqrt import rsqrt_stages
from llmfab.sim.fixed_point import ACT32
from llmfab.sim.vector_ops import GAMMA_BITS, NORM_INPUT_BITS

SUM_BITS = 48
EPS_BITS = 40


def _block_shift(peak):
    """`k = max(0, bitlen(peak) - 15)`."""
    length = bit_length(peak)
    return Mux(length > NORM_INPUT_BITS - 1, length - (NORM_INPUT_BITS - 1), 0)[:5]


class RmsNormUnit(PeakStatistic, RowUnit):
    """One token's ACT32 row and its gains -> the normalised ACT32 row.

    In: `x` (ACT32), `gain` (signed 18) per lane, `last`. Out: `y` (ACT32) per lane, `last`.
    Static ports: `gain_shift`, `sqrt_n_mantissa`, `sqrt_n_shift`, `eps_scaled`.
    """

    HAS_SWEEP = True
    SWEEP_LATENCY = 3
    SWEEP_SUM_BITS = SUM_BITS
    CONSTANTS_LATENCY = 13
    APPLY_LATENCY = 4

    def input_fields(self):
        return {"x": signed(ACT32.bits), "gain": signed(GAMMA_BITS)}

    def output_fields(self):
        return {"y": signed(ACT32.bits)}

    def config_fields(self):
        return {"gain_shift": signed(8), "sqrt_n_mantissa": unsigned(16), "sqrt_n_shift": signed(8),
                "eps_scaled": unsigned(EPS_BITS)}

    def sweep(self, lane, beat, peak, config):
        s1 = lane.stage(k=_block_shift(peak), **{f"x{i}": beat.x[i] for i in range(self.lanes)})
        s2 = lane.stage(**{f"n{i}": saturate(round_shift_by(getattr(s1, f"x{i}"), s1.k), NORM_INPUT_BITS)
                           for i in range(self.lanes)})
        s3 = lane.stage(**{f"q{i}": getattr(s2, f"n{i}") * getattr(s2, f"n{i}") for i in range(self.lanes)})
        (total,) = tree_reduce(lane, [(getattr(s3, f"q{i}"),) for i in range(self.lanes)],
                               lambda a, b: (a[0] + b[0],), "squares")
        return total

    def constants(self, lane, peak, total, config):
        s1 = lane.stage(k=_block_shift(peak), total=total)
        s2 = lane.stage(k=s1.k, total=(s1.total + round_shift_by(config.eps_scaled, s1.k << 1))[:SUM_BITS])
        s3 = lane.stage(k=s2.k, total=Mux(s2.total == 0, 1, s2.total)[:SUM_BITS])
        root, carried = rsqrt_stages(lane, s3.total, {"k": s3.k})
        shift = config.gain_shift + config.sqrt_n_shift + root.h - ACT32.frac
        s12 = lane.stage(k=carried["k"], product=root.y * config.sqrt_n_mantissa, shift=shift)
        s13 = lane.stage(k=s12.k, factor=round_shift(s12.product, 16)[:18], shift=s12.shift)
        return vars(s13)

    def apply(self, lane, element, row, config):
        s1 = lane.stage(narrow=saturate(round_shift_by(element.x, row.k), NORM_INPUT_BITS), gain=element.gain)
        s2 = lane.stage(product=s1.narrow * s1.gain)
        s3 = lane.stage(product=s2.product * row.factor)
        return {"y": lane.stage(y=shift_round_saturate(s3.product, row.shift, ACT32.bits)).y}
