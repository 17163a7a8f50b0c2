"""Rotary position embedding (docs/numerics.md §8), bit-exact with `llmfab.sim.numerics.apply_rope`.

A lane rotates one half-split pair `(x1, x2) = (x[i], x[i + D/2])` by the TRIG18 table values
`cos[p, i]`, `sin[p, i]` of its position (the tables are inputs; the engine reads them from
the table the compiler stores): `o1 = sat32(rshr(x1·cos - x2·sin, 16))`,
`o2 = sat32(rshr(x2·cos + x1·sin, 16))`.

Pipeline: 1 four products (32 × 18 bits), 2 sums, 3 round and saturate; latency 3, one pair per
lane per cycle, 8 DSP48E2 per lane (a 32 × 18 product spans two 27 × 18 multipliers).
"""

from __future__ import annotations

from amaranth.hdl import signed

from llmfab.rtl.units.arith import round_shift, saturate
from llmfab.rtl.units.pipeline import LaneUnit
from llmfab.sim.fixed_point import ACT32, TRIG18


class RopeUnit(LaneUnit):
    """`lanes` rotated pairs per cycle. In: `x1`, `x2` (ACT32), `cos`, `sin` (TRIG18); out: `o1`, `o2`."""

    LATENCY = 3

    def input_fields(self):
        return {"x1": signed(ACT32.bits), "x2": signed(ACT32.bits),
                "cos": signed(TRIG18.bits), "sin": signed(TRIG18.bits)}

    def output_fields(self):
        return {"o1": signed(ACT32.bits), "o2": signed(ACT32.bits)}

    def datapath(self, lane, inputs):
        x = inputs
        p = lane.stage(x1c=x.x1 * x.cos, x2s=x.x2 * x.sin, x2c=x.x2 * x.cos, x1s=x.x1 * x.sin)
        s = lane.stage(first=p.x1c - p.x2s, second=p.x2c + p.x1s)
        out = lane.stage(o1=saturate(round_shift(s.first, TRIG18.frac), ACT32.bits),
                         o2=saturate(round_shift(s.second, TRIG18.frac), ACT32.bits))
        return {"o1": out.o1, "o2": out.o2}
