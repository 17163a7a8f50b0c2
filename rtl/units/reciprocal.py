"""Divider-free reciprocal (docs/numerics.md §6.1), bit-exact with `llmfab.sim.numerics.reciprocal`.

`1/m ≈ r · 2^-(16+e)`: a leading-one detector gives `e`, a barrel shift the top 16 bits `u`, a
128-entry ROM the seed `r0` and one Newton step `r = r0 + rshr(r0 · (2^31 - u · r0), 31)`.

Pipeline (`reciprocal_stages`, 7 stages): 1 leading-one detect, 2 normalise, 3 seed ROM,
4 `u · r0` (16 × 17 bits), 5 `2^31 - u·r0`, 6 `r0 · err` (17 × 25 bits), 7 round and add.
DSP48E2 by construction: 2 per lane (both products fit 27 × 18). Throughput one element per
cycle per lane.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Value, unsigned

from llmfab.rtl.units.arith import bit_length, normalize16, rom, round_shift
from llmfab.rtl.units.pipeline import Lane, LaneUnit
from llmfab.sim.special_functions import RECIP_TABLE_BITS, reciprocal_table

RECIPROCAL_STAGES = 7
RESULT_BITS = 17  # r in (2^15, 2^16]
# |2^31 - u·r0| < 2^23 for every 16-bit u (tests/rtl/units/test_arith.py checks all of them), so
# the Newton correction is a 17 × 25-bit product: one DSP48E2.
ERROR_BITS = 25


def exponent_bits(width: int) -> int:
    """Bits of the leading-one position of a `width`-bit input."""
    return max((width - 1).bit_length(), 1)


def reciprocal_stages(lane: Lane, m: Value, carried: dict[str, Value] | None = None
                      ) -> tuple[SimpleNamespace, dict[str, Value]]:
    """Append the reciprocal of the unsigned value `m > 0` to `lane` (7 stages).

    Returns `(result, carried)`: `result.r`, `result.e` (and `result.u`, the top 16 bits of m,
    which the step of §3.3 reuses), and the `carried` side values delayed alongside.
    """
    carried = dict(carried or {})
    width = m.shape().width
    ebits = exponent_bits(width)
    s1, carried = lane.carry(carried, m=m, e=(bit_length(m) - 1)[:ebits])
    s2, carried = lane.carry(carried, u=normalize16(s1.m, s1.e), e=s1.e)
    seed_index = s2.u[16 - 1 - RECIP_TABLE_BITS:15]  # bits 14..8: (u >> 8) - 128
    s3, carried = lane.carry(carried, r0=rom(reciprocal_table().tolist(), seed_index), u=s2.u, e=s2.e)
    s4, carried = lane.carry(carried, product=s3.u * s3.r0, r0=s3.r0, u=s3.u, e=s3.e)
    s5, carried = lane.carry(carried, error=((1 << 31) - s4.product)[:ERROR_BITS].as_signed(),
                             r0=s4.r0, u=s4.u, e=s4.e)
    s6, carried = lane.carry(carried, correction=s5.r0 * s5.error, r0=s5.r0, u=s5.u, e=s5.e)
    s7, carried = lane.carry(carried, r=(s6.r0 + round_shift(s6.correction, 31))[:RESULT_BITS],
                             u=s6.u, e=s6.e)
    return s7, carried


class ReciprocalUnit(LaneUnit):
    """`lanes` reciprocals per cycle of unsigned `width`-bit inputs `m > 0`.

    Beat fields: in `m`; out `r` (17 bits), `e` (leading-one position). Latency 7 cycles,
    throughput one beat per cycle, 2 DSP48E2 per lane. `m = 0` is outside the contract (the
    result is then unspecified).
    """

    LATENCY = RECIPROCAL_STAGES

    def __init__(self, lanes: int = 1, width: int = 32):
        if not 1 <= width <= 62:
            raise ValueError("reciprocal inputs are 1..62 bits wide (docs/numerics.md §6.1)")
        self.width = width
        super().__init__(lanes)

    def input_fields(self):
        return {"m": unsigned(self.width)}

    def output_fields(self):
        return {"r": unsigned(RESULT_BITS), "e": unsigned(exponent_bits(self.width))}

    def datapath(self, lane, inputs):
        result, _ = reciprocal_stages(lane, inputs.m)
        return {"r": result.r, "e": result.e}
