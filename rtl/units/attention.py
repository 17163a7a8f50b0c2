"""Attention datapath (docs/numerics.md §7.3–§7.5): score and weighted-value dot products and the
exp2-based softmax, bit-exact with `llmfab.sim.numerics.attention` when chained
(queries requantized by `RequantizeUnit`, keys and values dequantized by `KvDequantizeUnit`).

- `DotProductUnit`: `Σ a_i · b_i` over a stream of beats of `lanes` pairs closed by `last`,
  then `sat(rshr(acc, shift))`. Scores: `a` int8 query codes, `b` ACT32 keys, 48-bit
  accumulator, no shift (§7.3). Values: `a` PROB17 probabilities, `b` ACT32 values, 50-bit
  accumulator, `sat32(rshr(·, 16))` (§7.5). Pipeline: products, adder tree (T stages),
  accumulator, output: `latency = T + 3` after a row's last beat, one beat per cycle.
  DSP48E2: 2 per lane (an 8- or 17-bit × 32-bit product spans two 27 × 18 multipliers).
- `SoftmaxUnit` (a RowUnit over one query's scores): collect `σmax` over visible keys; sweep
  `z_j = max(rshr((σ_j - σmax) · C, LS - Eq), -32·2^16)` with `C = rshr(Aq · LM, 16)`,
  `e_j = exp2(z_j)` (0 where not visible), `S = Σ e_j`; constants `(r, eS) = reciprocal(S)`;
  emit `p_j = rshr(e_j · r, eS)` (PROB17), recomputing `e_j` rather than buffering it. Sweep 8
  stages + tree, constants 7, per element 10; cycles per row of B beats `row_cycles(B, lanes)` =
  3B + 2T + 29. DSP48E2 per lane: 2 × (2 for the 49 × 17-bit `d · C`, 1 exp2) + 1 for `e · r`
  = 7, plus 2 per unit (reciprocal) and 1 for `Aq · LM`.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.rtl.units.arith import maximum, round_shift, round_shift_by, saturate, shift_round_saturate
from llmfab.rtl.units.exp2 import exp2_stages
from llmfab.rtl.units.pipeline import Lane
from llmfab.rtl.units.reciprocal import reciprocal_stages
from llmfab.rtl.units.row_unit import RowUnit, tree_reduce, tree_stages
from llmfab.sim.attention_ops import EXP2_ARGUMENT_MIN, SCORE_ACCUMULATOR_BITS, VALUE_ACCUMULATOR_BITS
from llmfab.sim.fixed_point import ACT32, PROB17

SCORE_MIN = -(1 << (SCORE_ACCUMULATOR_BITS - 1))
EXP2_ARGUMENT_BITS = 23  # z in [-32 · 2^16, 0]
SHIFTED_BITS = 40  # enough to see every z below the floor before it saturates


class DotProductUnit(wiring.Component):
    """`lanes` products per cycle summed over a row of beats; see the module docstring.

    In: `a` (`a_shape` × lanes), `b` (ACT32 × lanes), `last`. Out: `y` (`out_bits` signed).
    """

    def __init__(self, lanes: int, a_shape, accumulator_bits: int, out_shift: int = 0, out_bits: int | None = None):
        self.lanes = lanes
        self.accumulator_bits = accumulator_bits
        self.out_shift = out_shift
        self.out_bits = out_bits or accumulator_bits
        layout = data.StructLayout({"a": data.ArrayLayout(a_shape, lanes),
                                    "b": data.ArrayLayout(signed(ACT32.bits), lanes), "last": unsigned(1)})
        super().__init__({"i": In(stream.Signature(layout)),
                          "o": Out(stream.Signature(data.StructLayout({"y": signed(self.out_bits)})))})

    @classmethod
    def scores(cls, lanes: int) -> "DotProductUnit":
        """`σ = Σ_d q_d · k_d` (§7.3): int8 codes × ACT32 keys, 48 bits."""
        return cls(lanes, signed(8), SCORE_ACCUMULATOR_BITS)

    @classmethod
    def weighted_values(cls, lanes: int) -> "DotProductUnit":
        """`o = sat32(rshr(Σ_j p_j · v_j, 16))` (§7.5): PROB17 × ACT32, 50 bits."""
        return cls(lanes, unsigned(PROB17.bits), VALUE_ACCUMULATOR_BITS, PROB17.frac, ACT32.bits)

    @staticmethod
    def latency(lanes: int) -> int:
        """Cycles from a row's last beat to its output (no back-pressure)."""
        return tree_stages(lanes) + 3

    def elaborate(self, platform):
        m = Module()
        advance = Signal(name="advance")
        lane = Lane(m, advance, "dot")
        beat = self.i.payload
        s1 = lane.stage(valid=self.i.valid, last=beat.last,
                        **{f"p{k}": beat.a[k] * beat.b[k] for k in range(self.lanes)})
        summed = tree_reduce(lane, [(s1.p0, s1.valid, s1.last)] + [(getattr(s1, f"p{k}"),) for k in range(1, self.lanes)],
                             lambda x, y: (x[0] + y[0], *x[1:]), "sum")
        partial, valid, last = summed
        accumulator = Signal(signed(self.accumulator_bits), name="accumulator")
        total = (accumulator + partial)[:self.accumulator_bits].as_signed()
        with m.If(advance & valid):
            m.d.sync += accumulator.eq(Mux(last, 0, total))
        s2 = lane.stage(valid=valid, last=last, total=total)
        out = lane.stage(valid=s2.valid & s2.last,
                         y=saturate(round_shift(s2.total, self.out_shift), self.out_bits))
        if lane.latency != self.latency(self.lanes):
            raise AssertionError("DotProductUnit: stage count differs from latency()")
        m.d.comb += [advance.eq(~out.valid | self.o.ready), self.i.ready.eq(advance),
                     self.o.valid.eq(out.valid), self.o.payload.y.eq(out.y)]
        return m


def _exp_weight_stages(lane: Lane, score, visible, peak, factor, shift) -> tuple[SimpleNamespace, dict]:
    """`e = exp2(max(rshr((σ - σmax) · C, shift), -32·2^16))`, 0 where not visible (8 stages)."""
    s1 = lane.stage(diff=Mux(visible, score - peak, 0)[:SCORE_ACCUMULATOR_BITS + 1].as_signed(), visible=visible)
    s2 = lane.stage(product=s1.diff * factor, visible=s1.visible)
    shifted = shift_round_saturate(s2.product, shift, SHIFTED_BITS)
    s3 = lane.stage(z=maximum(shifted, EXP2_ARGUMENT_MIN)[:EXP2_ARGUMENT_BITS].as_signed(), visible=s2.visible)
    exp, carried = exp2_stages(lane, s3.z, {"visible": s3.visible})
    return lane.stage(e=Mux(carried["visible"], exp.p, 0)[:PROB17.bits]), {}


class SoftmaxUnit(RowUnit):
    """One query's scores -> probabilities (see the module docstring).

    In: `score` (48-bit signed) and `visible` per lane, `act_mantissa` (Aq) and `act_exponent`
    (Eq) of the query (taken from the row's first beat), `last`. Out: `p` (PROB17) per lane.
    Static ports: `log2e_mantissa` (LM), `log2e_shift` (LS) of
    `llmfab.sim.numerics.AttentionConstants`. Every row needs a visible key.
    """

    HAS_SWEEP = True
    SWEEP_LATENCY = 8
    CONSTANTS_LATENCY = 7
    APPLY_LATENCY = 10

    def __init__(self, lanes: int, max_beats: int):
        self.SWEEP_SUM_BITS = PROB17.bits + (lanes * max_beats).bit_length()
        super().__init__(lanes, max_beats)

    def input_fields(self):
        return {"score": signed(SCORE_ACCUMULATOR_BITS), "visible": unsigned(1)}

    def output_fields(self):
        return {"p": unsigned(PROB17.bits)}

    def row_input_fields(self):
        return {"act_mantissa": unsigned(16), "act_exponent": signed(6)}

    def config_fields(self):
        return {"log2e_mantissa": unsigned(16), "log2e_shift": signed(8)}

    def statistics(self, m, config):
        peak = Signal(signed(SCORE_ACCUMULATOR_BITS), name="peak")
        factor = Signal(unsigned(17), name="factor")
        shift = Signal(signed(9), name="argument_shift")
        m.d.sync += [factor.eq(round_shift(config.act_mantissa * config.log2e_mantissa, 16)),
                     shift.eq(config.log2e_shift - config.act_exponent)]
        return SimpleNamespace(peak=peak, factor=factor, shift=shift)

    def reduce(self, lane, beat):
        masked = [(Mux(v, s, SCORE_MIN),) for s, v in zip(beat.score, beat.visible)]
        return tree_reduce(lane, masked, lambda a, b: (maximum(a[0], b[0]),), "peak")

    def accumulate(self, stats, reduced, first):
        return [stats.peak.eq(Mux(first, reduced[0], maximum(stats.peak, reduced[0])))]

    def sweep(self, lane, beat, stats, config):
        forks = [lane.fork(f"e{k}") for k in range(self.lanes)]
        weights = [_exp_weight_stages(f, beat.score[k], beat.visible[k], stats.peak, stats.factor, stats.shift)[0].e
                   for k, f in enumerate(forks)]
        lane.join(forks)
        (total,) = tree_reduce(lane, [(e,) for e in weights], lambda a, b: (a[0] + b[0],), "sum")
        return total

    def constants(self, lane, stats, total, config):
        recip, carried = reciprocal_stages(lane, total, {"peak": stats.peak, "factor": stats.factor,
                                                         "shift": stats.shift})
        return {"r": recip.r, "e": recip.e, **carried}

    def apply(self, lane, element, row, config):
        weight, _ = _exp_weight_stages(lane, element.score, element.visible, row.peak, row.factor, row.shift)
        s9 = lane.stage(product=weight.e * row.r)
        return {"p": lane.stage(p=round_shift_by(s9.product, row.e)[:PROB17.bits]).p}
