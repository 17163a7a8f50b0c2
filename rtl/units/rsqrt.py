"""Reciprocal square root (docs/numerics.md §6.2), bit-exact with `llmfab.sim.numerics.rsqrt`.

`1/sqrt(v) ≈ y · 2^-(16+h)`: normalise `v` to `u` with leading-one position `e`; an odd `e`
reads `u` in [2, 4) (`x = u << 1`); a 128-entry ROM seeds `y0`; one Newton step
`y = y0 + rshr(y0 · (2^31 - x · rshr(y0², 16)), 32)`; `h = (e - odd) / 2`.

Pipeline (`rsqrt_stages`, 8 stages): 1 leading-one detect, 2 normalise, 3 seed ROM,
4 `y0²` (16 × 16), 5 `x · rshr(y0², 16)` (17 × 17), 6 `2^31 - …`, 7 `y0 · err` (16 × 26),
8 round and add. DSP48E2 by construction: 3 per lane. Throughput one element per cycle per lane.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Value, unsigned

from llmfab.rtl.units.arith import bit_length, normalize16, rom, round_shift
from llmfab.rtl.units.pipeline import Lane, LaneUnit
from llmfab.rtl.units.reciprocal import exponent_bits
from llmfab.sim.special_functions import RSQRT_TABLE_BITS, rsqrt_table

RSQRT_STAGES = 8
RESULT_BITS = 17
# |2^31 - x·rshr(y0², 16)| < 2^24 for every 16-bit u and parity (checked exhaustively in
# tests/rtl/units/test_arith.py), so the correction is a 16 × 26-bit product: one DSP48E2.
ERROR_BITS = 26


def rsqrt_stages(lane: Lane, v: Value, carried: dict[str, Value] | None = None
                 ) -> tuple[SimpleNamespace, dict[str, Value]]:
    """Append the reciprocal square root of the unsigned value `v > 0` to `lane` (8 stages).

    Returns `(result, carried)` with `result.y` and `result.h` and the `carried` side values.
    """
    carried = dict(carried or {})
    width = v.shape().width
    ebits = exponent_bits(width)
    s1, carried = lane.carry(carried, v=v, e=(bit_length(v) - 1)[:ebits])
    s2, carried = lane.carry(carried, u=normalize16(s1.v, s1.e), e=s1.e)
    odd = s2.e[0]
    seed_index = Cat(s2.u[16 - 1 - RSQRT_TABLE_BITS:15], odd)  # 64·odd + (u >> 9) - 64
    s3, carried = lane.carry(carried, y0=rom(rsqrt_table().tolist(), seed_index),
                             x=(s2.u << odd)[:17], half=(s2.e >> 1))
    s4, carried = lane.carry(carried, square=s3.y0 * s3.y0, y0=s3.y0, x=s3.x, half=s3.half)
    s5, carried = lane.carry(carried, scaled=s4.x * round_shift(s4.square, 16), y0=s4.y0, half=s4.half)
    s6, carried = lane.carry(carried, error=((1 << 31) - s5.scaled)[:ERROR_BITS].as_signed(), y0=s5.y0,
                             half=s5.half)
    s7, carried = lane.carry(carried, correction=s6.y0 * s6.error, y0=s6.y0, half=s6.half)
    s8, carried = lane.carry(carried, y=(s7.y0 + round_shift(s7.correction, 32))[:RESULT_BITS], h=s7.half)
    return s8, carried


class RsqrtUnit(LaneUnit):
    """`lanes` reciprocal square roots per cycle of unsigned `width`-bit inputs `v > 0`.

    Beat fields: in `v`; out `y` (17 bits), `h` (half the even exponent). Latency 8 cycles,
    throughput one beat per cycle, 3 DSP48E2 per lane.
    """

    LATENCY = RSQRT_STAGES

    def __init__(self, lanes: int = 1, width: int = 48):
        if not 1 <= width <= 62:
            raise ValueError("rsqrt inputs are 1..62 bits wide (docs/numerics.md §6.2)")
        self.width = width
        super().__init__(lanes)

    def input_fields(self):
        return {"v": unsigned(self.width)}

    def output_fields(self):
        return {"y": unsigned(RESULT_BITS), "h": unsigned(exponent_bits(self.width))}

    def datapath(self, lane, inputs):
        result, _ = rsqrt_stages(lane, inputs.v)
        return {"y": result.y, "h": result.h}
