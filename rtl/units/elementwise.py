"""Elementwise ACT32 operations (docs/numerics.md §9), bit-exact with `llmfab.sim.numerics`
`residual_add` and `multiply`.

- `ResidualAddUnit`: `sat32(a + b)`; 1 stage, no DSP.
- `ProductUnit` (SwiGLU gate × up): `sat32(rshr(a · b, 16))`; 3 stages (the 32 × 32-bit product
  with two registers for the DSP cascade, then round and saturate), 4 DSP48E2 per lane.
Both take one beat of `lanes` element pairs per cycle.
"""

from __future__ import annotations

from amaranth.hdl import signed

from llmfab.rtl.units.arith import round_shift, saturate
from llmfab.rtl.units.pipeline import LaneUnit
from llmfab.sim.fixed_point import ACT32


class _BinaryAct32Unit(LaneUnit):
    def input_fields(self):
        return {"a": signed(ACT32.bits), "b": signed(ACT32.bits)}

    def output_fields(self):
        return {"y": signed(ACT32.bits)}


class ResidualAddUnit(_BinaryAct32Unit):
    """`lanes` saturating ACT32 additions per cycle; latency 1, no DSP."""

    LATENCY = 1

    def datapath(self, lane, inputs):
        return {"y": lane.stage(y=saturate(inputs.a + inputs.b, ACT32.bits)).y}


class ProductUnit(_BinaryAct32Unit):
    """`lanes` ACT32 products `sat32(rshr(a · b, 16))` per cycle; latency 3, 4 DSP48E2 per lane."""

    LATENCY = 3

    def datapath(self, lane, inputs):
        s1 = lane.stage(product=inputs.a * inputs.b)
        s2 = lane.stage(product=s1.product)  # second register: the DSP cascade's pipeline stage
        return {"y": lane.stage(y=saturate(round_shift(s2.product, ACT32.frac), ACT32.bits)).y}
