"""Base-2 exponential of a non-positive Q.16 argument (docs/numerics.md §7.1), bit-exact with
`llmfab.sim.numerics.exp2`.

`z = zi · 2^16 + zf`; bits 15..9 of `zf` index a 129-knot ROM of `2^(k/128)`, bits 8..0
interpolate linearly, `rshr(v, -zi)` applies the integer part. The knot ROM is stored as the
lower knot and the difference to the next (one read per element).

Pipeline (`exp2_stages`, 4 stages): 1 ROM read and shift clamp, 2 `diff · t` (10 × 9 bits),
3 add, 4 rounding shift. DSP48E2 by construction: 1 per lane (or ~50 LUTs). Throughput one
element per cycle per lane.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Mux, Value, signed, unsigned

from llmfab.rtl.units.arith import rom, round_shift, round_shift_by
from llmfab.rtl.units.pipeline import Lane, LaneUnit
from llmfab.sim.fixed_point import PROB17
from llmfab.sim.special_functions import EXP2_FRAC_BITS, EXP2_TABLE_BITS, exp2_table

EXP2_STAGES = 4
INTERP_BITS = EXP2_FRAC_BITS - EXP2_TABLE_BITS
# v < 2^17 for every table entry but the last, so any shift of 18 or more rounds it to 0.
SHIFT_LIMIT = 18


def exp2_stages(lane: Lane, z: Value, carried: dict[str, Value] | None = None
                ) -> tuple[SimpleNamespace, dict[str, Value]]:
    """Append `exp2(z)` of the signed Q.16 value `z <= 0` to `lane` (4 stages); returns
    `(result, carried)` with `result.p` (PROB17, unsigned 17 bits)."""
    carried = dict(carried or {})
    table = exp2_table()
    whole = z >> EXP2_FRAC_BITS  # floor, <= 0
    frac = z[:EXP2_FRAC_BITS]
    index = frac[INTERP_BITS:]
    knots = table[:-1].tolist()
    steps = (table[1:] - table[:-1]).tolist()
    shift = -whole
    s1, carried = lane.carry(carried, lower=rom(knots, index), step=rom(steps, index),
                             rest=frac[:INTERP_BITS],
                             shift=Mux(shift >= SHIFT_LIMIT, SHIFT_LIMIT, shift[:5])[:5])
    s2, carried = lane.carry(carried, lower=s1.lower, delta=s1.step * s1.rest, shift=s1.shift)
    s3, carried = lane.carry(carried, v=s2.lower + round_shift(s2.delta, INTERP_BITS), shift=s2.shift)
    s4, carried = lane.carry(carried, p=round_shift_by(s3.v, s3.shift)[:PROB17.bits])
    return s4, carried


class Exp2Unit(LaneUnit):
    """`lanes` base-2 exponentials per cycle of signed `width`-bit Q.16 arguments `z <= 0`.

    Beat fields: in `z`; out `p` (PROB17). Latency 4 cycles, throughput one beat per cycle,
    1 DSP48E2 per lane. Positive `z` is outside the contract.
    """

    LATENCY = EXP2_STAGES

    def __init__(self, lanes: int = 1, width: int = 24):
        if not EXP2_FRAC_BITS + 1 <= width <= 62:
            raise ValueError("exp2 arguments are 17..62-bit signed Q.16 values")
        self.width = width
        super().__init__(lanes)

    def input_fields(self):
        return {"z": signed(self.width)}

    def output_fields(self):
        return {"p": unsigned(PROB17.bits)}

    def datapath(self, lane, inputs):
        result, _ = exp2_stages(lane, inputs.z)
        return {"p": result.p}
