"""The attention datapath chained (scores, softmax, weighted values) reproduces
llmfab.sim.numerics.attention bit for bit on both simulators (docs/numerics.md §7)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.attention import DotProductUnit, SoftmaxUnit
from llmfab.sim import numerics
from llmfab.tests.rtl.units.rows import row_beats
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, run_stream

LANES = 4
HEAD_DIM = 8
KEYS = 12
QUERIES = 6


def _head(seed: int):
    """One head: rotated queries, KV4 round-tripped keys and values, a causal mask; one query
    sees a single key, one has near-equal scores, magnitudes span small to large."""
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((1, QUERIES, HEAD_DIM)) * 2.0 ** rng.integers(12, 22, (1, QUERIES, 1))).astype(np.int64)
    q[0, 1] = 0  # an all-zero query: every score 0, uniform probabilities
    raw = (rng.standard_normal((2, 1, KEYS, HEAD_DIM)) * 2.0 ** 18).astype(np.int64)
    keys, values = (numerics.kv4_dequantize(numerics.kv4_quantize(r, axis=-1)) for r in raw)
    visible = numerics.causal_visibility(QUERIES, KEYS)
    visible[0] = False
    visible[0, 0] = True  # a query that sees one key: p = 1.0
    return q, keys, values, visible


def _rows(a: np.ndarray, b: np.ndarray) -> list[dict]:
    """Dot-product rows: every pair (row of a, row of b), as beats of LANES pairs."""
    pairs_a = np.repeat(a, len(b), axis=0)
    pairs_b = np.tile(b, (len(a), 1))
    return row_beats(LANES, {"a": pairs_a, "b": pairs_b})


@pytest.mark.parametrize("simulator", simulator_params())
def test_attention_chain_matches_numerics(simulator, tmp_path):
    q, keys, values, visible = _head(70)
    constants = numerics.AttentionConstants.for_head_dim(HEAD_DIM)
    expected = numerics.attention(q, keys, values, constants, visible)[0]
    act = numerics.requantize_per_token(q)
    codes = act.codes[0]

    scores_case = StreamCase("attention_scores", DotProductUnit.scores(LANES), _rows(codes, keys[0]),
                             [{"y": int(v)} for v in (codes @ keys[0].T).ravel()])
    scores_run = run_stream(scores_case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.6)
    assert_beats_equal(scores_case, scores_run)
    scores = np.array([beat["y"] for beat in scores_run.outputs]).reshape(QUERIES, KEYS)

    softmax = SoftmaxUnit(LANES, max_beats=KEYS // LANES)
    softmax_inputs = row_beats(LANES, {"score": scores, "visible": visible.astype(np.int64)},
                               {"act_mantissa": act.scale_mantissa[0], "act_exponent": act.scale_exponent[0]})
    softmax_case = StreamCase("attention_softmax", softmax, softmax_inputs, [{}] * len(softmax_inputs),
                              static={"log2e_mantissa": constants.mantissa, "log2e_shift": constants.shift})
    softmax_run = run_stream(softmax_case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.6)
    probs = np.array([beat["p"] for beat in softmax_run.outputs]).reshape(QUERIES, KEYS)
    assert np.all(probs[~visible] == 0) and probs[0, 0] >= (1 << 16) - 1  # one visible key: p ≈ 1
    assert np.all(np.abs(probs.sum(axis=1) - (1 << 16)) <= KEYS)

    values_case = StreamCase("attention_values", DotProductUnit.weighted_values(LANES),
                             _rows(probs, values[0].T), [{"y": int(v)} for v in expected.ravel()])
    values_run = run_stream(values_case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.6)
    assert_beats_equal(values_case, values_run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_dot_product_latency_and_softmax_row_cycles(simulator, tmp_path):
    q, keys, _, visible = _head(71)
    act = numerics.requantize_per_token(q)
    codes = act.codes[0]
    case = StreamCase("attention_scores", DotProductUnit.scores(LANES), _rows(codes[:1], keys[0][:3]),
                      [{"y": int(v)} for v in (codes[:1] @ keys[0][:3].T).ravel()])
    run = run_stream(case, simulator, tmp_path)
    assert_beats_equal(case, run)
    beats = HEAD_DIM // LANES
    last_beats = np.array(run.in_cycles)[beats - 1::beats]
    assert np.all(np.array(run.out_cycles) - last_beats == DotProductUnit.latency(LANES))

    constants = numerics.AttentionConstants.for_head_dim(HEAD_DIM)
    scores = codes @ keys[0].T
    inputs = row_beats(LANES, {"score": scores[:2], "visible": visible[:2].astype(np.int64)},
                       {"act_mantissa": act.scale_mantissa[0, :2], "act_exponent": act.scale_exponent[0, :2]})
    case = StreamCase("attention_softmax", SoftmaxUnit(LANES, max_beats=KEYS // LANES), inputs, [{}] * len(inputs),
                      static={"log2e_mantissa": constants.mantissa, "log2e_shift": constants.shift})
    run = run_stream(case, simulator, tmp_path)
    beats = KEYS // LANES
    assert run.out_cycles[beats - 1] - run.in_cycles[0] + 1 == SoftmaxUnit.row_cycles(beats, LANES)
