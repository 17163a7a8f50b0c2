"""Reference interpreter: attention against torch, merges, iterations and input errors."""

import math

import numpy as np
import pytest
import torch

from llmfab.compiler.attention import block_keys, one_pass_attention, three_pass_attention
from llmfab.compiler.interpreter import run, run_with_presence
from llmfab.compiler.ir import lambda_filter, prefix_filter, window_filter
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade


def torch_attention(q, k, v, scale, allowed=None):
    """softmax(Q^T K * scale) V^T with Q[E, P], K[E, M], V[F, M]; returns AV[F, P]."""
    scores = torch.tensor(q).T @ torch.tensor(k) * scale  # [P, M]
    if allowed is not None:
        scores = scores.masked_fill(~torch.tensor(allowed), float("-inf"))
    return (torch.softmax(scores, dim=-1) @ torch.tensor(v).T).T.numpy()


def allowed_mask(mask_fn, m, p):
    return np.array([[mask_fn(key, query) for key in range(m)] for query in range(p)])


MASKS = [
    (None, None),
    (prefix_filter("m", "p"), lambda k, q: k <= q),
    (window_filter("m", "p", 3), lambda k, q: q - 3 < k <= q),
    (lambda_filter("m", "p", 2, 3), lambda k, q: k < 2 or q - 3 < k <= q),
]


@pytest.mark.parametrize("mask, mask_fn", MASKS)
@pytest.mark.parametrize("block", [1, 2, 4])
def test_attention_matches_torch(mask, mask_fn, block):
    rng = np.random.default_rng(block)
    m, p, e, f = 8, 8, 5, 3
    q, k, v = rng.normal(size=(e, p)), rng.normal(size=(e, m)), rng.normal(size=(f, m))
    scale = 1 / math.sqrt(e)
    expected = torch_attention(q, k, v, scale, allowed_mask(mask_fn, m, p) if mask_fn else None)
    three = run(three_pass_attention(m, p, e, f, scale, mask), {"Q": q, "K": k, "V": v})["AV"]
    one = run(one_pass_attention(m, p, e, f, block, scale, mask),
              {"Q": q, "BK": block_keys(k, block), "BV": block_keys(v, block)})["AV"]
    assert np.abs(three - expected).max() < 1e-10
    assert np.abs(one - expected).max() < 1e-10


def test_large_scores_stay_finite():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(2, 3)) * 40, rng.normal(size=(2, 4)) * 40, rng.normal(size=(2, 4))
    expected = torch_attention(q, k, v, 1.0)
    got = run(one_pass_attention(4, 3, 2, 2, 2), {"Q": q, "BK": block_keys(k, 2), "BV": block_keys(v, 2)})["AV"]
    assert np.isfinite(got).all() and np.abs(got - expected).max() < 1e-10


MERGES = "rank I = 3\ntensor A[I]\ntensor B[I]\ntensor T[I]\ntensor Z[I]\nT[i] = A[i] where i != 1\n"


@pytest.mark.parametrize(
    "expr, values, present",
    [
        ("T[i] * B[i]", [2 * 5, 0, 4 * 7], [1, 0, 1]),
        ("T[i] *{union} B[i]", [10, 6, 28], [1, 1, 1]),
        ("T[i] + B[i]", [7, 6, 11], [1, 1, 1]),
        ("T[i] +{intersect} B[i]", [7, 0, 11], [1, 0, 1]),
        ("T[i] +{pass} B[i]", [7, 6, 11], [1, 1, 1]),
        ("B[i] *{right} T[i]", [10, 0, 28], [1, 0, 1]),
        ("max(T[i], -B[i])", [2, -6, 4], [1, 1, 1]),
        ("exp(T[i])", [math.exp(2), 0, math.exp(4)], [1, 0, 1]),
    ],
)
def test_map_merges(expr, values, present):
    cascade = parse_cascade(MERGES + f"Z[i] = {expr}\n")
    result = run_with_presence(cascade, {"A": np.array([2.0, 3.0, 4.0]), "B": np.array([5.0, 6.0, 7.0])})["Z"]
    np.testing.assert_allclose(result.values, values)
    assert result.present.tolist() == [bool(x) for x in present]


@pytest.mark.parametrize(
    "reduction, value, present",
    [("sum", 6.0, True), ("sum{intersect}", 0.0, False), ("max", 4.0, True), ("min{pass}", 0.0, True),
     ("prod", 8.0, True)],
)
def test_reduce_merges(reduction, value, present):
    cascade = parse_cascade(MERGES.replace("tensor Z[I]", "tensor Z[]") + f"Z[] = T[i] reduce i: {reduction}\n")
    result = run_with_presence(cascade, {"A": np.array([2.0, 3.0, 4.0]), "B": np.zeros(3)})["Z"]
    assert result.values.item() == value and bool(result.present) is present


def test_iteration_runs_until_the_condition_holds():
    text = (
        "rank I = 5\ntensor X[I]\ntensor S[I + 1]\n"
        "iterate i over I until i >= 3 {\n  init S[0] = 0.0\n  S[i + 1] = S[i] + X[i]\n}\n"
    )
    result = run_with_presence(parse_cascade(text), {"X": np.arange(1.0, 6.0)})["S"]
    assert result.values.tolist() == [0, 1, 3, 6, 0, 0]
    assert result.present.tolist() == [True, True, True, True, False, False]


def test_symbolic_sizes_are_bound_from_inputs():
    cascade = parse_cascade("rank K\nrank N\ntensor A[K, N]\ntensor Z[N]\nZ[n] = A[k, n] reduce k: max\n")
    assert run(cascade, {"A": np.array([[1.0, 5.0], [3.0, 2.0]])})["Z"].tolist() == [3.0, 5.0]


def test_input_errors():
    cascade = parse_cascade("rank K\ntensor A[K]\ntensor B[K]\ntensor Z[K]\nZ[k] = A[k] + B[k]\n")
    with pytest.raises(IRError, match="rank K has size 2 from input A but input B gives it size 3"):
        run(cascade, {"A": np.zeros(2), "B": np.zeros(3)})
    with pytest.raises(IRError, match="input tensor B is missing"):
        run(cascade, {"A": np.zeros(2)})
    with pytest.raises(IRError, match="input C is not an input"):
        run(cascade, {"A": np.zeros(2), "B": np.zeros(2), "C": np.zeros(2)})
    with pytest.raises(IRError, match="A has 2 axes"):
        run(cascade, {"A": np.zeros((2, 2)), "B": np.zeros(2)})


def test_double_write_is_rejected_at_run_time():
    cascade = parse_cascade("rank K = 2\ntensor A[K]\ntensor Z[K]\nZ[k] = A[k]\nZ[k] = A[k] * 2.0\n")
    with pytest.raises(IRError, match="overwrites elements of Z"):
        run(cascade, {"A": np.zeros(2)})
