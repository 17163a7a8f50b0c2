"""The grouped int8 × intN MAC with scale application (docs/numerics.md §4, §5.2), bit-exact
with `llmfab.sim.numerics.linear`.

One output row for one token streams in as beats of `lanes` input lanes: int8 activation codes,
the stored weight codes of those lanes (or, under 2:4, the `lanes/2` kept codes and `lanes/4`
pattern codes), the group's zero point and scale multiplier M, and the row's shift and the
token's step `A · 2^E`. The unit forms `w = c - z` (`2c - z2` with half-integer zero points),
under 2:4 selects the activation lane of every kept weight with a 3:1 mux (§4.2), multiplies
and sums the beat in a tree, accumulates the group sum `P_g` (`group_bits` wide), multiplies it
by `M_g` into the 48-bit row sum `Y`, and at the row's last beat outputs
`y = sat32(rshr(Y · A, row_shift - E))`.

Pipeline: 1 weight forming / lane select, 2 products, T adder-tree stages (registered every
two levels), 1 group accumulator, 1 `P · M` (group_bits × 16: one DSP48E2 up to 27 bits),
1 row accumulator (48 bits, the DSP's P register), 2 `Y · A` (48 × 16 bits, 3 DSP48E2 as Yosys
maps it, and a cascade register), 1 rounding shift and saturation: `latency(lanes) = 8 + T`. Throughput one
beat per cycle, so a row of `n` inputs takes `n / lanes` cycles plus the latency once per
stream of rows (rows follow each other without a bubble). The int8 × (b+1)-bit products of 2-
to 4-bit weights are written as shift-and-add (`arith.shift_add_multiply`), so they become LUT
logic (§4.1); 8-bit weights use one DSP per product. DSP48E2 by construction: 4 per unit
(P·M 1, Y·A 3), plus `lanes` (or `lanes/2` under 2:4) for W8.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.rtl.units.arith import shift_add_multiply, shift_round_saturate
from llmfab.rtl.units.pipeline import Lane
from llmfab.rtl.units.row_unit import tree_reduce, tree_stages
from llmfab.sim.fixed_point import ACT32, ACT_CODE_MAX
from llmfab.sim.linear_ops import PATTERN_LANES, ROW_ACCUMULATOR_BITS

WEIGHT_BITS = (2, 3, 4, 8)
FIXED_STAGES = 8


def group_accumulator_bits(group_size: int, bits: int, doubled: bool) -> int:
    """`bitlen(g · 127 · max|w|) + 1` (§4.3) for `bits`-bit codes (doubled: `2c - z2`)."""
    largest = ((1 << bits) - 1) * (2 if doubled else 1) + (1 if doubled else 0)
    return (group_size * ACT_CODE_MAX * largest).bit_length() + 1


class MacLanesUnit(wiring.Component):
    """Grouped MAC of one output row per stream of beats (see the module docstring).

    Parameters: `lanes` input lanes per beat (a multiple of 4 under 2:4), weight `bits`,
    `group_size` (a multiple of `lanes`; sizes the group accumulator), `sparse` (2:4 kept codes),
    `doubled` (half-integer zero points: `w = 2c - z2`).
    In beat fields: `a` (int8 × lanes), `c` (codes × lanes, or × lanes/2 kept), `pattern`
    (3 bits × lanes/4, 2:4 only), `zero`, `scale` (M), `group_last`, `row_shift`,
    `act_mantissa` (A), `act_exponent` (E), `last`. Out: `y` (ACT32).
    """

    def __init__(self, lanes: int, bits: int, group_size: int, sparse: bool = False, doubled: bool = False):
        if bits not in WEIGHT_BITS:
            raise ValueError(f"weight codes have {WEIGHT_BITS} bits, not {bits}")
        if sparse and lanes % 4:
            raise ValueError("2:4 selection needs a multiple of 4 lanes")
        if group_size % lanes:
            raise ValueError("the group size must be a multiple of the lane count")
        if doubled and bits == 8:
            raise ValueError("8-bit weights have no half-integer zero points")
        self.lanes, self.bits, self.group_size = lanes, bits, group_size
        self.sparse, self.doubled = sparse, doubled
        self.group_bits = group_accumulator_bits(group_size, bits, doubled)
        kept = lanes // 2 if sparse else lanes
        fields = {"a": data.ArrayLayout(signed(8), lanes), "c": data.ArrayLayout(unsigned(bits), kept)}
        if sparse:
            fields["pattern"] = data.ArrayLayout(unsigned(3), lanes // 4)
        fields.update({"zero": unsigned(bits + 1), "scale": unsigned(16), "group_last": unsigned(1),
                       "row_shift": signed(8), "act_mantissa": unsigned(16), "act_exponent": signed(6),
                       "last": unsigned(1)})
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(data.StructLayout({"y": signed(ACT32.bits)})))})

    @staticmethod
    def latency(lanes: int, sparse: bool = False) -> int:
        """Cycles from a row's last input beat to its output (no back-pressure)."""
        return FIXED_STAGES + tree_stages(lanes // 2 if sparse else lanes)

    def _pairs(self, beat):
        """(activation, signed weight) of every product of the beat."""
        weights = [(c << 1 if self.doubled else c) - beat.zero for c in beat.c]
        if not self.sparse:
            return list(zip(beat.a, weights))
        pairs = []
        for block in range(self.lanes // 4):
            lanes = [beat.a[4 * block + j] for j in range(4)]
            first = {int(p): int(f) for p, (f, _) in enumerate(PATTERN_LANES)}
            second = {int(p): int(s) for p, (_, s) in enumerate(PATTERN_LANES)}
            pattern = beat.pattern[block]
            pairs.append((_select(lanes, pattern, first), weights[2 * block]))
            pairs.append((_select(lanes, pattern, second), weights[2 * block + 1]))
        return pairs

    def elaborate(self, platform):
        m = Module()
        advance = Signal(name="advance")
        lane = Lane(m, advance, "mac")
        beat = self.i.payload
        flags = {"valid": self.i.valid, "group_last": beat.group_last, "last": beat.last, "scale": beat.scale,
                 "row_shift": beat.row_shift, "act_mantissa": beat.act_mantissa, "act_exponent": beat.act_exponent}
        pairs = self._pairs(beat)
        s1, flags = lane.carry(flags, **{f"a{k}": a for k, (a, _) in enumerate(pairs)},
                               **{f"w{k}": w for k, (_, w) in enumerate(pairs)})
        multiply = (lambda a, w: a * w) if self.bits == 8 else shift_add_multiply
        s2, flags = lane.carry(flags, **{f"p{k}": multiply(getattr(s1, f"a{k}"), getattr(s1, f"w{k}"))
                                        for k in range(len(pairs))})
        carried_names = list(flags)
        summed = tree_reduce(lane, [(getattr(s2, f"p{k}"), *flags.values()) if k == 0 else (getattr(s2, f"p{k}"),)
                                    for k in range(len(pairs))], _sum_first, "sum")
        partial, flags = summed[0], dict(zip(carried_names, summed[1:]))
        valid = flags["valid"]

        group = Signal(signed(self.group_bits), name="group_accumulator")
        group_total = (group + partial)[:self.group_bits].as_signed()
        with m.If(advance & valid):
            m.d.sync += group.eq(Mux(flags["group_last"], 0, group_total))
        g1, flags = lane.carry(flags, group_sum=group_total)
        g2, flags = lane.carry(flags, scaled=g1.group_sum * flags["scale"])

        row = Signal(signed(ROW_ACCUMULATOR_BITS), name="row_accumulator")
        row_total = (row + Mux(flags["group_last"], g2.scaled, 0))[:ROW_ACCUMULATOR_BITS].as_signed()
        with m.If(advance & flags["valid"]):
            m.d.sync += row.eq(Mux(flags["last"], 0, row_total))
        r1, flags = lane.carry(flags, row_sum=row_total)
        r2, flags = lane.carry(flags, product=r1.row_sum * flags["act_mantissa"],
                               shift=flags["row_shift"] - flags["act_exponent"])
        r3, flags = lane.carry(flags, product=r2.product, shift=r2.shift)
        r4, flags = lane.carry(flags, y=shift_round_saturate(r3.product, r3.shift, ACT32.bits))
        if lane.latency != self.latency(self.lanes, self.sparse):
            raise AssertionError(f"MacLanesUnit: {lane.latency} stages, latency() says {self.latency(self.lanes)}")

        out_valid = flags["valid"] & flags["last"]
        m.d.comb += [
            advance.eq(~out_valid | self.o.ready),
            self.i.ready.eq(advance),
            self.o.valid.eq(out_valid),
            self.o.payload.y.eq(r4.y),
        ]
        return m


def _sum_first(a: tuple, b: tuple) -> tuple:
    """Tree step: add the products, keep the side values of the left operand (lane 0's)."""
    return (a[0] + b[0], *a[1:])


def _select(lanes, pattern, lane_of_pattern: dict[int, int]):
    """The activation lane a 2:4 pattern code keeps for one kept weight (a 3:1 mux)."""
    choice = lanes[lane_of_pattern[0]]
    for code, index in lane_of_pattern.items():
        choice = Mux(pattern == code, lanes[index], choice)
    return choice
