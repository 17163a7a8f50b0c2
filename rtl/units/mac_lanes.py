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

`EngineMacLanesUnit` is the same pipeline for the engine's GEMM sequencer, where one datapath
serves every tile: the weight format comes with each beat (2- to 8-bit codes zero-extended to 8
bits, `sparse` for 2:4 selection, `doubled` for `2c - z2`), the activation lanes are 9 bits so
an A16 code can pass as its two signed bytes (`high` marks the upper byte's beat, whose sum is
shifted left by 8 before the group accumulator, §4.3), and the output is the row sum `Y` itself
(64 bits, wrapping like the emulator's int64), because K-split tiles add it to the accumulator
in the OUT buffer before the scale is applied. Its latency is `5 + T` (no `Y · A` stages).
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
FINISH_STAGES = 3  # Y·A (2 stages) and the rounding shift with saturation
A16_BYTE_PEAK = 128  # |byte| of an int16 code's upper pass (hi in [-128, 128], §4.3)
A16_CODE_PEAK = 1 << 15  # |int16 code| a group sum may see (two byte passes)
WEIGHT_PEAK = 255  # |c - z| (or |2c - z2|) of any stored code and zero point
ENGINE_ROW_SUM_BITS = 64  # the emulator's int64 accumulator (wraps alike)


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
        self.row_bits = ROW_ACCUMULATOR_BITS
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

    def _latency(self) -> int:
        return self.latency(self.lanes, self.sparse)

    def _weights(self, beat) -> list:
        """The signed weight of every kept code of the beat."""
        return [(c << 1 if self.doubled else c) - beat.zero for c in beat.c]

    def _pairs(self, beat):
        """(activation, signed weight) of every product of the beat."""
        weights = self._weights(beat)
        if not self.sparse:
            return list(zip(beat.a, weights))
        return list(zip(_kept_activations(beat), weights))

    def _multiply(self, a, w):
        return a * w if self.bits == 8 else shift_add_multiply(a, w)

    def _side_fields(self, beat) -> dict:
        """Beat fields carried beside the products to the row stages."""
        return {"row_shift": beat.row_shift, "act_mantissa": beat.act_mantissa, "act_exponent": beat.act_exponent}

    def _beat_sum(self, partial, flags):
        """The beat's contribution to the group sum."""
        return partial

    def _row_output(self, lane: Lane, flags: dict, row_sum) -> tuple[dict, dict]:
        """(output payload fields, carried flags) from the row sum `Y`: `sat32(rshr(Y · A, row_shift - E))`."""
        y, flags = finish_stages(lane, flags, row_sum, flags["act_mantissa"], flags["row_shift"], flags["act_exponent"])
        return {"y": y}, flags

    def elaborate(self, platform):
        m = Module()
        advance = Signal(name="advance")
        lane = Lane(m, advance, "mac")
        beat = self.i.payload
        flags = {"valid": self.i.valid, "group_last": beat.group_last, "last": beat.last, "scale": beat.scale,
                 **self._side_fields(beat)}
        pairs = self._pairs(beat)
        s1, flags = lane.carry(flags, **{f"a{k}": a for k, (a, _) in enumerate(pairs)},
                               **{f"w{k}": w for k, (_, w) in enumerate(pairs)})
        s2, flags = lane.carry(flags, **{f"p{k}": self._multiply(getattr(s1, f"a{k}"), getattr(s1, f"w{k}"))
                                        for k in range(len(pairs))})
        carried_names = list(flags)
        summed = tree_reduce(lane, [(getattr(s2, f"p{k}"), *flags.values()) if k == 0 else (getattr(s2, f"p{k}"),)
                                    for k in range(len(pairs))], _sum_first, "sum")
        partial, flags = summed[0], dict(zip(carried_names, summed[1:]))
        valid = flags["valid"]

        group = Signal(signed(self.group_bits), name="group_accumulator")
        group_total = (group + self._beat_sum(partial, flags))[:self.group_bits].as_signed()
        with m.If(advance & valid):
            m.d.sync += group.eq(Mux(flags["group_last"], 0, group_total))
        g1, flags = lane.carry(flags, group_sum=group_total)
        g2, flags = lane.carry(flags, scaled=g1.group_sum * flags["scale"])

        row = Signal(signed(self.row_bits), name="row_accumulator")
        row_total = (row + Mux(flags["group_last"], g2.scaled, 0))[:self.row_bits].as_signed()
        with m.If(advance & flags["valid"]):
            m.d.sync += row.eq(Mux(flags["last"], 0, row_total))
        r1, flags = lane.carry(flags, row_sum=row_total)
        outputs, flags = self._row_output(lane, flags, r1.row_sum)
        if lane.latency != self._latency():
            raise AssertionError(f"{type(self).__name__}: {lane.latency} stages, latency() says {self._latency()}")

        out_valid = flags["valid"] & flags["last"]
        m.d.comb += [
            advance.eq(~out_valid | self.o.ready),
            self.i.ready.eq(advance),
            self.o.valid.eq(out_valid),
        ]
        m.d.comb += [self.o.payload[name].eq(value) for name, value in outputs.items()]
        return m


class EngineMacLanesUnit(MacLanesUnit):
    """The MAC with the weight format per beat and row sums out (the module docstring's last
    paragraph), for the GEMM sequencer.

    Parameters: `lanes` activation lanes (a multiple of 4); every beat has `lanes/2` products:
    a dense beat multiplies activation lane k by code k (k < lanes/2), a 2:4 beat (`sparse`)
    selects the lane of each kept code from its 4-lane block. `group_size` is the largest group
    the unit must sum exactly (sizes the group accumulator for A16 codes).
    In beat fields: `a` (9-bit signed × lanes), `c` (8-bit codes × lanes/2), `pattern` (3 bits ×
    lanes/4), `zero` (8 bits, doubled when `doubled`), `scale` (M), `sparse`, `doubled`, `high`
    (the beat carries the upper bytes of A16 codes: its sum counts 256 times), `group_last`,
    `last`. Out: `row_sum` (`Y = Σ_g P_g·M_g`, 64-bit two's complement).
    """

    def __init__(self, lanes: int, group_size: int):
        if lanes % 4:
            raise ValueError("the engine MAC needs a multiple of 4 activation lanes")
        self.lanes, self.bits, self.group_size = lanes, 8, group_size
        self.sparse, self.doubled = True, True
        self.group_bits = (group_size * A16_CODE_PEAK * WEIGHT_PEAK).bit_length() + 1
        self.row_bits = ENGINE_ROW_SUM_BITS
        fields = {"a": data.ArrayLayout(signed(9), lanes), "c": data.ArrayLayout(unsigned(8), lanes // 2),
                  "pattern": data.ArrayLayout(unsigned(3), lanes // 4), "zero": unsigned(8), "scale": unsigned(16),
                  "sparse": unsigned(1), "doubled": unsigned(1), "high": unsigned(1), "group_last": unsigned(1),
                  "last": unsigned(1)}
        wiring.Component.__init__(self, {
            "i": In(stream.Signature(data.StructLayout(fields))),
            "o": Out(stream.Signature(data.StructLayout({"row_sum": signed(ENGINE_ROW_SUM_BITS)})))})

    @staticmethod
    def latency(lanes: int, sparse: bool = True) -> int:
        """Cycles from a row's last input beat to its row sum (no back-pressure)."""
        return FIXED_STAGES - FINISH_STAGES + tree_stages(lanes // 2)

    def _weights(self, beat) -> list:
        return [Mux(beat.doubled, c << 1, c) - beat.zero for c in beat.c]

    def _pairs(self, beat):
        dense = beat.a[:self.lanes // 2]
        kept = _kept_activations(beat)
        return [(Mux(beat.sparse, s, d), w) for s, d, w in zip(kept, dense, self._weights(beat))]

    def _multiply(self, a, w):
        return a * w

    def _side_fields(self, beat) -> dict:
        return {"high": beat.high}

    def _beat_sum(self, partial, flags):
        return Mux(flags["high"], partial << 8, partial)

    def _row_output(self, lane: Lane, flags: dict, row_sum) -> tuple[dict, dict]:
        return {"row_sum": row_sum}, flags


def finish_stages(lane: Lane, carried: dict, row_sum, act_mantissa, row_shift, act_exponent) -> tuple:
    """`sat32(rshr(Y · A, row_shift - E))` (§5.2) in FINISH_STAGES register stages of `lane`
    (the 48 × 16 product with a cascade register, then the rounding shift and saturation), with
    the `carried` side values delayed alike; returns (y, carried registers)."""
    r2, carried = lane.carry(carried, product=row_sum * act_mantissa, shift=row_shift - act_exponent)
    r3, carried = lane.carry(carried, product=r2.product, shift=r2.shift)
    r4, carried = lane.carry(carried, y=shift_round_saturate(r3.product, r3.shift, ACT32.bits))
    return r4.y, carried


def _kept_activations(beat) -> list:
    """The activation lane of every kept code of a 2:4 beat: a 3:1 mux per code (§4.2)."""
    first = {int(p): int(f) for p, (f, _) in enumerate(PATTERN_LANES)}
    second = {int(p): int(s) for p, (_, s) in enumerate(PATTERN_LANES)}
    chosen = []
    for block in range(len(beat.a) // 4):
        lanes = [beat.a[4 * block + j] for j in range(4)]
        pattern = beat.pattern[block]
        chosen += [_select(lanes, pattern, first), _select(lanes, pattern, second)]
    return chosen


def _sum_first(a: tuple, b: tuple) -> tuple:
    """Tree step: add the products, keep the side values of the left operand (lane 0's)."""
    return (a[0] + b[0], *a[1:])


def _select(lanes, pattern, lane_of_pattern: dict[int, int]):
    """The activation lane a 2:4 pattern code keeps for one kept weight (a 3:1 mux)."""
    choice = lanes[lane_of_pattern[0]]
    for code, index in lane_of_pattern.items():
        choice = Mux(pattern == code, lanes[index], choice)
    return choice
