"""The shared integer ops against float references, with the error bounds of docs/numerics.md,
plus exact integer properties and saturation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.quant.sparse_index import decompress_2to4
from llmfab.quant.weight_quant import GroupQuantConfig, ScaleInit, ZeroPoint, dequantize_groupwise, quantize_groupwise
from llmfab.sim import numerics as nx
from llmfab.sim.integer_weights import magnitude_2to4_mask

Q16 = 1 << 16
FAST = settings(max_examples=60, deadline=None)


def rng(seed=0):
    return np.random.default_rng(seed)


# §1 rounding, saturation, normalisation ---------------------------------------------------------

@FAST
@given(st.integers(-(1 << 50), 1 << 50), st.integers(-8, 40))
def test_round_shift_is_round_half_up(value, shift):
    expected = value << -shift if shift < 0 else (value + (1 << shift >> 1)) >> shift
    assert int(nx.round_shift(value, shift)) == expected
    if shift > 0:
        assert abs(int(nx.round_shift(value, shift)) - value / 2 ** shift) <= 0.5


def test_round_shift_ties_go_up_for_both_signs():
    assert nx.round_shift([5, -5, 6, -6, 7, -7], 1).tolist() == [3, -2, 3, -3, 4, -3]


@FAST
@given(st.integers(0, (1 << 62) - 1))
def test_bit_length_matches_python(value):
    assert int(nx.bit_length(value)) == value.bit_length()
    u, e = nx.normalize_mantissa(max(value, 1))
    assert (1 << 15) <= int(u) < (1 << 16) and int(e) == max(value, 1).bit_length() - 1


def test_saturate_clamps_to_width():
    assert nx.saturate([1 << 40, -(1 << 40), 5], 32).tolist() == [2**31 - 1, -(2**31), 5]
    assert nx.saturate([-3, 300], 8, signed=False).tolist() == [0, 255]


# §6 reciprocal and rsqrt ---------------------------------------------------------------------------

def test_reciprocal_relative_error_within_2_pow_minus_14():
    values = np.concatenate([np.arange(1, 1 << 17), rng().integers(1, 1 << 61, 100_000)])
    r, e = nx.reciprocal(values)
    relative = np.abs(r * np.ldexp(1.0, -(16 + e)) * values - 1)
    assert relative.max() <= 2.0 ** -14


def test_rsqrt_relative_error_within_2_pow_minus_13():
    values = np.concatenate([np.arange(1, 1 << 17), rng(1).integers(1, 1 << 61, 100_000)])
    y, h = nx.rsqrt(values)
    relative = np.abs(y * np.ldexp(1.0, -(16 + h)) * np.sqrt(values.astype(np.float64)) - 1)
    assert relative.max() <= 2.0 ** -13


def test_tables_are_deterministic_and_anchored():
    assert nx.exp2_table()[0] == Q16 and nx.exp2_table()[-1] == 2 * Q16 and len(nx.exp2_table()) == 129
    assert len(nx.reciprocal_table()) == 128 and len(nx.rsqrt_table()) == 128
    assert np.array_equal(nx.reciprocal_table(), nx.reciprocal_table())


def test_special_functions_reject_out_of_domain():
    with pytest.raises(ValueError):
        nx.reciprocal([0])
    with pytest.raises(ValueError):
        nx.rsqrt([-4])
    with pytest.raises(ValueError):
        nx.exp2([1])


# §7 exp2, §10 sigmoid / SiLU ------------------------------------------------------------------------

def test_exp2_relative_error_within_2_pow_minus_15_plus_half_lsb():
    z = np.concatenate([np.arange(-(2 << 16), 1), -rng(2).integers(0, 40 << 16, 100_000)])
    exact = Q16 * np.exp2(z / Q16)
    assert np.all(np.abs(nx.exp2(z) - exact) <= exact * 2.0 ** -15 + 0.5)
    assert int(nx.exp2(0)) == Q16


def test_exp2_is_monotone():
    z = np.arange(-(20 << 16), 1, 7)
    assert np.all(np.diff(nx.exp2(z)) >= 0)


def test_sigmoid_and_silu_track_float():
    x = np.concatenate([rng(3).integers(-(24 << 16), 24 << 16, 100_000), [0, 1, -1, 2**31 - 1, -(2**31)]])
    real = x / Q16
    sigmoid = Q16 / (1 + np.exp(-np.clip(real, -700, 700)))
    assert np.abs(nx.sigmoid(x) - sigmoid).max() <= 3
    assert np.all((nx.sigmoid(x) >= 0) & (nx.sigmoid(x) <= Q16))
    assert np.all(np.abs(nx.silu(x) - x * sigmoid / Q16) <= 3 * np.abs(real) + 1)


# §3 per-token requantization --------------------------------------------------------------------------

@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 30))
def test_requantization_matches_exact_rounding_and_round_trips(seed, magnitude_bits):
    x = rng(seed).integers(-(1 << magnitude_bits), 1 << magnitude_bits, (4, 96))
    act = nx.requantize_per_token(x)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    exact = np.where(peak > 0, x * 127 / np.maximum(peak, 1), 0)
    assert np.all(np.abs(act.codes) <= 127)
    assert np.all(np.abs(act.codes - exact) <= 0.5 + 127 * 2.0 ** -13)
    step = peak[:, 0] / 127
    assert np.all(np.abs(act.scale_mantissa * np.ldexp(1.0, act.scale_exponent) - step) <= step * 2.0 ** -13)
    back = nx.dequantize_act(act)  # code error <= 0.5 + 127 * 2**-13 steps, step error 127 * 2**-13 steps
    assert np.all(np.abs(back - x) <= (0.5 + 2 * 127 * 2.0 ** -13) * step[:, None] + 1)


def test_requantization_of_zero_and_extreme_rows():
    x = np.array([[0, 0, 0, 0], [2**31 - 1, -(2**31), 5, 0]])
    act = nx.requantize_per_token(x)
    assert act.codes[0].tolist() == [0, 0, 0, 0] and act.scale_mantissa[0] == 0
    assert act.codes[1, :2].tolist() == [127, -127]


# §4 MAC, 2:4 selection, §5 scales ------------------------------------------------------------------------

@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from([8, 16, 64]))
def test_group_sums_equal_int64_dot_products(seed, group):
    g = rng(seed)
    q = g.integers(-127, 128, (5, 4 * group))
    w = g.integers(-15, 16, (7, 4 * group))
    weight = nx.IntegerWeight(w, np.ones((7, 4), dtype=np.int64), np.zeros(7, dtype=np.int64), group)
    expected = np.einsum("tgi,ogi->tog", q.reshape(5, 4, group), w.reshape(7, 4, group))
    assert np.array_equal(nx.group_sums(q, weight), expected)


def test_worst_case_accumulators_of_llama2_7b_down_proj():
    """in = 11008, W2 (c - z in [-3, 3]), group 64, all activations at +-127: the group sum fits
    16 bits signed, the whole-row integer sum 23 bits, the scaled row sum Y 48 bits."""
    n, group = 11008, 64
    q = np.full((1, n), -127)
    w = np.full((1, n), 3)
    sums = nx.group_sums(q, nx.IntegerWeight(w, np.full((1, n // group), 65535), np.zeros(1, np.int64), group))
    assert sums.min() == -64 * 127 * 3 >= -(1 << 15)
    assert sums.sum() == -n * 127 * 3 >= -(1 << 22)
    assert abs(int((sums * 65535).sum())) < 1 << 47


def test_2to4_lane_selection_matches_quant_and_dense_mac():
    torch.manual_seed(0)
    weight = torch.randn(6, 32)
    mask = magnitude_2to4_mask(weight)
    from llmfab.quant.sparse_index import encode_2to4_mask

    patterns = encode_2to4_mask(mask).numpy()
    kept = np.arange(1, 6 * 16 + 1).reshape(6, 16)
    dense = nx.expand_2to4(kept, patterns)
    assert np.array_equal(dense, decompress_2to4(torch.from_numpy(kept), mask).numpy())
    lanes = nx.kept_lanes(patterns)
    q = rng(4).integers(-127, 128, (3, 32))
    gathered = np.einsum("oj,toj->to", kept, q[:, lanes])  # each kept weight reads its own lane
    assert np.array_equal(gathered, q @ dense.T)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("zero_point", [ZeroPoint.INTEGER, ZeroPoint.HALF_INTEGER])
@pytest.mark.parametrize("bits", [2, 4])
def test_prepared_weight_reproduces_quant_dequantization(sparse, zero_point, bits):
    torch.manual_seed(bits)
    weight = torch.randn(8, 64) * torch.logspace(-3, 0, 8)[:, None]
    config = GroupQuantConfig(bits=bits, group_size=16, init=ScaleInit.MINMAX, zero_point=zero_point)
    mask = magnitude_2to4_mask(weight) if sparse else None
    quantized = quantize_groupwise(weight, config, mask=mask)
    prepared = nx.prepare_weight(quantized.codes.numpy(), quantized.scales.float().numpy(), quantized.zeros.numpy(),
                                 16, None if mask is None else quantized.mask_codes.numpy(),
                                 zero_halves=zero_point is ZeroPoint.HALF_INTEGER)
    mantissa = np.repeat(prepared.scale_mantissa, 16, axis=1)
    real = prepared.values * mantissa * np.ldexp(1.0, -prepared.row_shift)[:, None]
    reference = dequantize_groupwise(quantized).double().numpy()
    row_max_scale = quantized.scales.float().numpy().max(axis=1, keepdims=True)
    assert np.all(np.abs(real - reference) <= np.abs(prepared.values) * row_max_scale * 2.0 ** -16)
    assert prepared.scale_mantissa.max() < 1 << 16


def test_scale_multipliers_are_exact_for_the_row_maximum():
    scales = np.array([[0.5, 0.0078125, 0.3], [1e-4, 3e-5, 2e-4]], dtype=np.float16).astype(np.float64)
    mantissa, shift = nx.scale_multipliers(scales)
    top = scales.argmax(axis=1)
    assert np.all(mantissa[np.arange(2), top] * np.ldexp(1.0, -shift) == scales[np.arange(2), top])
    assert np.all((1 << 15) <= mantissa.max(axis=1)) and np.all(mantissa.max(axis=1) < 1 << 16)


def test_linear_tracks_float_and_saturates():
    g = rng(5)
    x = g.integers(-(40 << 16), 40 << 16, (6, 128))
    w = g.integers(-3, 4, (10, 128))
    scales = np.ldexp(g.integers(1024, 2048, (10, 4)), -g.integers(12, 20, (10, 4))).astype(np.float64)
    mantissa, shift = nx.scale_multipliers(scales)
    weight = nx.IntegerWeight(w, mantissa, shift, 32)
    act = nx.requantize_per_token(x)
    out = nx.linear(act, weight)
    real_w = w * np.repeat(scales, 32, axis=1)
    reference = nx.dequantize_act(act) @ real_w.T
    bound = (np.abs(nx.dequantize_act(act)) @ np.abs(real_w).T) * 2.0 ** -14 + 1
    assert np.all(np.abs(out - reference) <= bound)
    huge = nx.IntegerWeight(np.full((1, 128), 3), np.full((1, 4), 65535), np.array([-20]), 32)
    assert nx.linear(act, huge).max() == 2**31 - 1


def test_embedding_rows_match_quant():
    torch.manual_seed(1)
    table = torch.randn(20, 32)
    quantized = quantize_groupwise(table, GroupQuantConfig(bits=8, group_size=32, init=ScaleInit.MINMAX))
    prepared = nx.prepare_weight(quantized.codes.numpy(), quantized.scales.float().numpy(), quantized.zeros.numpy(), 32)
    rows = nx.embed(np.array([3, 0, 19]), prepared)
    reference = dequantize_groupwise(quantized).double().numpy()[[3, 0, 19]]
    assert np.abs(rows / Q16 - reference).max() <= 2.0 ** -16


# §6.3 RMSNorm, §8 RoPE, §9 elementwise -------------------------------------------------------------------

@pytest.mark.parametrize("magnitude", [2**-10, 1.0, 300.0, 20000.0])
def test_rmsnorm_tracks_float(magnitude):
    g = rng(6)
    x = nx.ACT32.from_float(g.standard_normal((5, 576)) * magnitude)
    gamma = g.uniform(-3, 3, 576)
    norm = nx.prepare_norm(gamma, 1e-5)
    real = x / Q16
    reference = gamma * real / np.sqrt((real**2).mean(-1, keepdims=True) + 1e-5) * Q16
    out = nx.rmsnorm(x, norm)
    assert np.all(np.abs(out - reference) <= 2.0 ** -12 * np.abs(reference).max(axis=-1, keepdims=True) + 2)


def test_rmsnorm_of_zero_row_is_zero():
    assert not nx.rmsnorm(np.zeros((1, 8), dtype=np.int64), nx.prepare_norm(np.ones(8), 1e-6)).any()


def test_rope_matches_float_rotation():
    g = rng(7)
    inv_freq = 1.0 / 10000 ** (np.arange(0, 64, 2) / 64)
    positions = np.arange(0, 4000, 97)
    cos, sin = nx.rope_tables(inv_freq, positions)
    assert cos.max() <= 1 << 16 and cos.min() >= -(1 << 16)
    x = g.integers(-(50 << 16), 50 << 16, (3, len(positions), 64))
    angle = positions[:, None] * inv_freq[None, :]
    x1, x2 = x[..., :32], x[..., 32:]
    reference = np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1)
    assert np.abs(nx.apply_rope(x, cos, sin) - reference).max() <= 2 * (50 << 16) * 2.0 ** -17 + 1


def test_residual_add_and_multiply_saturate():
    top, bottom = 2**31 - 1, -(2**31)
    assert nx.residual_add([top, bottom, 5], [10, -10, -7]).tolist() == [top, bottom, -2]
    assert nx.multiply([3 << 16, top, bottom], [1 << 15, top, top]).tolist() == [3 << 15, top, bottom]


# §6.4 KV4, §7 attention ---------------------------------------------------------------------------------------

@FAST
@given(st.integers(0, 2**32 - 1), st.integers(4, 30), st.sampled_from([-1, -2]))
def test_kv4_round_trip_within_half_a_step(seed, magnitude_bits, axis):
    x = rng(seed).integers(-(1 << magnitude_bits), 1 << magnitude_bits, (2, 32, 16))
    block = nx.kv4_quantize(x, axis)
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    assert np.array_equal(block.scale, np.maximum(-((lo - hi) // 15), 1)) and np.array_equal(block.offset, lo)
    assert block.codes.min() >= 0 and block.codes.max() <= 15
    assert np.all(np.abs(nx.kv4_dequantize(block) - x) <= block.scale * (0.5 + 2.0 ** -10))


def test_attention_tracks_float_softmax():
    g = rng(8)
    heads, kv_heads, t, d = 4, 2, 24, 32
    q = g.integers(-(4 << 16), 4 << 16, (heads, t, d))
    k = g.integers(-(4 << 16), 4 << 16, (kv_heads, t, d))
    v = g.integers(-(4 << 16), 4 << 16, (kv_heads, t, d))
    visible = nx.causal_visibility(t, t)
    out = nx.attention(q, k, v, nx.AttentionConstants.for_head_dim(d), visible)
    qd = nx.dequantize_act(nx.requantize_per_token(q)) / Q16  # the op attends with int8 queries
    kd, vd = np.repeat(k, 2, 0) / Q16, np.repeat(v, 2, 0) / Q16
    scores = np.where(visible, qd @ kd.transpose(0, 2, 1) / np.sqrt(d), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    reference = (probs / probs.sum(-1, keepdims=True)) @ vd * Q16
    assert np.abs(out - reference).max() <= 2.0 ** -11 * np.abs(v).max()


def test_causal_visibility_for_a_decode_step():
    assert nx.causal_visibility(1, 5).tolist() == [[True] * 5]
    assert nx.causal_visibility(2, 3).tolist() == [[True, True, False], [True, True, True]]


def test_round_shift_equals_the_formula_for_scalar_array_and_mixed_shifts():
    """round_shift's fast paths (one shift, only right shifts) and its general path give
    floor((v + 2**(s-1)) / 2**s) for s > 0 (s capped at 62), v * 2**-s for s <= 0."""
    from llmfab.sim.fixed_point import round_shift

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.integers(-(1 << 40), 1 << 40, 200), [0, 1, -1, 2, -2, 3, -3]])

    def formula(v: int, s: int) -> int:
        if s <= 0:
            return v << -s
        s = min(s, 62)
        return (v + (1 << (s - 1))) >> s  # Python ints: exact floor

    for shift in (0, 1, 5, 17, 62, 70, -3, np.int64(9)):
        got = round_shift(values, shift)
        assert got.dtype == np.int64
        assert got.tolist() == [formula(int(v), int(shift)) for v in values]
    for shifts in (rng.integers(1, 70, values.size), rng.integers(-8, 30, values.size)):
        got = round_shift(values, shifts)
        assert got.tolist() == [formula(int(v), int(s)) for v, s in zip(values, shifts)]
    zero = round_shift(values, 0)
    assert zero is not values and np.array_equal(zero, values)
