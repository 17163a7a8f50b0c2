"""KV-cache quantization and dequantization (docs/numerics.md §6.4), bit-exact with
`llmfab.sim.numerics.kv4_quantize` / `kv4_dequantize` for 4-bit (KV4) and 8-bit (KV8) codes.

A reduction group (one head's token over head_dim, or one channel over a key block, streamed
as a row) gives `offset = lo = min`, `scale = max(1, ceil((hi - lo) / M))` with `M = 2^b - 1`
(a constant division: `(d + M - 1) · C >> s`, exact for every 32-bit `d`), `(r, e) =
reciprocal(scale)`, `s0 = max(0, e - (16 - b))`; each element becomes
`code = clamp(rshr(rshr(x - lo, s0) · r, 16 + e - s0), 0, M)`. Dequantization is
`sat32(offset + scale · code)`.

`KvQuantizeUnit` (a RowUnit): constants 11 stages (difference, constant-division product,
shift and max, reciprocal 7, shifts), per element 3 stages (subtract and pre-shift, 17 × 17-bit
product, rounding shift and clamp); cycles per row of B beats `row_cycles(B, lanes)` =
2B + 17 + T (T reduction tree stages). DSP48E2 by construction: 1 per lane + 6 per unit
(reciprocal 2, the 33 × 32-bit constant division 4; once per row, it could share a DSP).
`KvDequantizeUnit`: 2 stages, one beat of `lanes` codes per cycle; `scale · code` with a b-bit
code is a shift-and-add (no DSP needed).
"""

from __future__ import annotations

from amaranth.hdl import Mux, Signal, signed, unsigned

from llmfab.rtl.units.arith import clamp, maximum, minimum, round_shift_by, saturate
from llmfab.rtl.units.pipeline import LaneUnit
from llmfab.rtl.units.reciprocal import reciprocal_stages
from llmfab.rtl.units.row_unit import RowUnit, tree_reduce
from llmfab.sim.fixed_point import ACT32

# (multiplier, shift) with floor(n / M) = n * multiplier >> shift for every n < 2^32 + M
CONSTANT_DIVISION = {4: (0x88888889, 35), 8: (0x80808081, 39)}
NARROW_BITS = 17  # rshr(x - lo, s0) < 2^17
SCALE_BITS = 32  # stored as ACT32


def _check_bits(bits: int) -> int:
    if bits not in CONSTANT_DIVISION:
        raise ValueError(f"KV codes have 4 or 8 bits, not {bits}")
    return bits


class KvQuantizeUnit(RowUnit):
    """A group of ACT32 values -> `bits`-bit codes with the group's scale and offset.

    In: `x` (ACT32 per lane), `last`. Out: `code` (per lane), `scale`, `offset` (ACT32), `last`.
    """

    CONSTANTS_LATENCY = 11
    APPLY_LATENCY = 3

    def __init__(self, lanes: int, max_beats: int, bits: int = 4):
        self.bits = _check_bits(bits)
        super().__init__(lanes, max_beats)

    def input_fields(self):
        return {"x": signed(ACT32.bits)}

    def output_fields(self):
        return {"code": unsigned(self.bits)}

    def row_fields(self):
        return {"scale": unsigned(SCALE_BITS), "offset": signed(ACT32.bits)}

    def statistics(self, m, config):
        return (Signal(signed(ACT32.bits), name="low"), Signal(signed(ACT32.bits), name="high"))

    def reduce(self, lane, beat):
        return tree_reduce(lane, [(x, x) for x in beat.x],
                           lambda a, b: (minimum(a[0], b[0]), maximum(a[1], b[1])), "range")

    def accumulate(self, stats, reduced, first):
        low, high = stats
        return [low.eq(Mux(first, reduced[0], minimum(low, reduced[0]))),
                high.eq(Mux(first, reduced[1], maximum(high, reduced[1])))]

    def constants(self, lane, stats, total, config):
        low, high = stats
        max_code = (1 << self.bits) - 1
        multiplier, shift = CONSTANT_DIVISION[self.bits]
        s1 = lane.stage(span=(high - low)[:ACT32.bits], offset=low)
        s2 = lane.stage(quotient=(s1.span + (max_code - 1)) * multiplier, offset=s1.offset)
        quotient = (s2.quotient >> shift)[:SCALE_BITS]
        s3 = lane.stage(scale=Mux(quotient == 0, 1, quotient)[:SCALE_BITS], offset=s2.offset)
        recip, carried = reciprocal_stages(lane, s3.scale, {"scale": s3.scale, "offset": s3.offset})
        pre_shift = Mux(recip.e > 16 - self.bits, recip.e - (16 - self.bits), 0)[:5]
        s11 = lane.stage(r=recip.r, pre_shift=pre_shift, code_shift=(16 + recip.e - pre_shift)[:6],
                         scale=carried["scale"], offset=carried["offset"])
        return vars(s11)

    def apply(self, lane, element, row, config):
        difference = (element.x - row.offset)[:ACT32.bits]  # x >= lo
        s1 = lane.stage(narrow=round_shift_by(difference, row.pre_shift)[:NARROW_BITS])
        s2 = lane.stage(product=s1.narrow * row.r)
        s3 = lane.stage(code=clamp(round_shift_by(s2.product, row.code_shift), 0, (1 << self.bits) - 1))
        return {"code": s3.code}


class KvDequantizeUnit(LaneUnit):
    """`lanes` dequantized values per cycle: in `code`, `scale`, `offset` per lane (per-channel
    keys carry one scale per lane; per-token values repeat the row's); out `x = sat32(offset +
    scale · code)`. Latency 2."""

    LATENCY = 2

    def __init__(self, lanes: int, bits: int = 4):
        self.bits = _check_bits(bits)
        super().__init__(lanes)

    def input_fields(self):
        return {"code": unsigned(self.bits), "scale": unsigned(SCALE_BITS), "offset": signed(ACT32.bits)}

    def output_fields(self):
        return {"x": signed(ACT32.bits)}

    def datapath(self, lane, inputs):
        s1 = lane.stage(step=inputs.scale * inputs.code, offset=inputs.offset)
        return {"x": lane.stage(x=saturate(s1.offset + s1.step, ACT32.bits)).x}
