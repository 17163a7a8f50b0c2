"""Sigmoid and SiLU (docs/numerics.md §10), bit-exact with `llmfab.sim.numerics.sigmoid` / `silu`.

`t = exp2(-rshr(|x| · 47274, 15))` is `exp(-|x|)`; the reciprocal of `2^16 + t` (`e` is 16 or
17) gives `R = rshr(r, e - 16) = 1/(1 + t)`; sigmoid is `R` for `x >= 0`, `2^16 - R` otherwise;
SiLU is `rshr(x · sigmoid(x), 16)`.

Pipeline (`sigmoid_stages`, 15 stages): 1 `|x|`, 2 `|x| · log2(e)` (32 × 16 bits), 3 round and
negate, 4–7 exp2 (`exp2_stages`), 8–14 reciprocal of `2^16 + t` (`reciprocal_stages`), 15 select.
SiLU adds 2 stages: the product `x · sigmoid` (32 × 17 bits) and its rounding.
DSP48E2 by construction per lane: sigmoid 5 (2 + 1 + 2), SiLU 7. One element per cycle per lane.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Mux, Value, signed, unsigned

from llmfab.rtl.units.arith import absolute, round_shift, round_shift_by
from llmfab.rtl.units.exp2 import exp2_stages
from llmfab.rtl.units.pipeline import Lane, LaneUnit
from llmfab.rtl.units.reciprocal import reciprocal_stages
from llmfab.sim.fixed_point import ACT32, PROB17
from llmfab.sim.special_functions import LOG2E_MANTISSA, LOG2E_SHIFT, ONE

SIGMOID_STAGES = 15
SILU_STAGES = SIGMOID_STAGES + 2


def sigmoid_stages(lane: Lane, x: Value, carried: dict[str, Value] | None = None
                   ) -> tuple[SimpleNamespace, dict[str, Value]]:
    """Append the sigmoid of the signed Q.16 value `x` to `lane` (15 stages); returns
    `(result, carried)` with `result.p` (PROB17) and `result.x` (the input, delayed)."""
    carried = {**(carried or {}), "x": x}
    s1, carried = lane.carry(carried, magnitude=absolute(x))
    s2, carried = lane.carry(carried, scaled=s1.magnitude * LOG2E_MANTISSA)
    s3, carried = lane.carry(carried, z=-round_shift(s2.scaled, LOG2E_SHIFT))
    exp, carried = exp2_stages(lane, s3.z, carried)
    recip, carried = reciprocal_stages(lane, (ONE + exp.p)[:PROB17.bits + 1], carried)
    positive = round_shift_by(recip.r, (recip.e - 16)[:1])[:PROB17.bits]
    x_delayed = carried["x"]
    s15, carried = lane.carry({k: v for k, v in carried.items() if k != "x"},
                              p=Mux(x_delayed >= 0, positive, ONE - positive)[:PROB17.bits], x=x_delayed)
    return s15, carried


class SigmoidUnit(LaneUnit):
    """`lanes` sigmoids per cycle: in `x` (ACT32, signed Q15.16), out `p` (PROB17).

    Latency 15 cycles, one beat per cycle, 5 DSP48E2 per lane.
    """

    LATENCY = SIGMOID_STAGES

    def input_fields(self):
        return {"x": signed(ACT32.bits)}

    def output_fields(self):
        return {"p": unsigned(PROB17.bits)}

    def datapath(self, lane, inputs):
        result, _ = sigmoid_stages(lane, inputs.x)
        return {"p": result.p}


class SiluUnit(LaneUnit):
    """`lanes` SiLUs per cycle: in `x` (ACT32), out `y = rshr(x · sigmoid(x), 16)` (ACT32; the
    result never exceeds |x|, so it needs no saturation).

    Latency 17 cycles, one beat per cycle, 7 DSP48E2 per lane.
    """

    LATENCY = SILU_STAGES

    def input_fields(self):
        return {"x": signed(ACT32.bits)}

    def output_fields(self):
        return {"y": signed(ACT32.bits)}

    def datapath(self, lane, inputs):
        sig, _ = sigmoid_stages(lane, inputs.x)
        product = lane.stage(value=sig.x * sig.p)
        out = lane.stage(y=round_shift(product.value, ACT32.frac)[:ACT32.bits].as_signed())
        return {"y": out.y}
