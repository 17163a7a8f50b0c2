"""16-bit (A16) per-token requantization and the int16 x intN MAC (docs/numerics.md §3.1, §4.3):
bounds of the 16-bit codes and step, the unchanged 8-bit path, the accumulator checks, and a linear
layer fed with A16 codes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.sim import numerics as nx
from llmfab.sim.fixed_point import normalize_mantissa, round_shift
from llmfab.sim.linear_ops import (
    INV127,
    INV32767,
    STEP_RECIPROCALS,
    check_group_accumulator,
    code_max,
    group_accumulator_bits,
)
from llmfab.sim.special_functions import reciprocal

FAST = settings(max_examples=60, deadline=None)


def rows(seed: int, magnitude_bits: int, shape=(4, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(1 << magnitude_bits), 1 << magnitude_bits, shape)


def int8_formula(x):
    """§3 as it stood before the 16-bit variant (what the RTL requantize unit is tested against)."""
    peak = np.abs(x).max(axis=-1, keepdims=True)
    safe = np.where(peak > 0, peak, 1)
    r, e = reciprocal(safe)
    s0 = np.maximum(e - 15, 0)
    codes = np.clip(round_shift(round_shift(x, s0) * (127 * r), 16 + e - s0), -127, 127) * (peak > 0)
    u, e_m = normalize_mantissa(safe, 16)
    return codes, (round_shift(u * 66052, 17) * (peak > 0))[:, 0], (e_m - 21)[:, 0]


def test_step_constants_are_derived_alike_and_fit_16_bits():
    assert STEP_RECIPROCALS == {8: INV127, 16: INV32767}
    for bits, constant in STEP_RECIPROCALS.items():
        assert constant == round(2 ** (15 + bits) / code_max(bits))
        u = np.array([1 << 15, (1 << 16) - 1])  # the whole range of a normalised 16-bit mantissa
        assert round_shift(u * constant, 17).max() <= 0xFFFF
    assert code_max(16) == 32767 and code_max(8) == 127
    with pytest.raises(ValueError, match="8 or 16 bits, not 4"):
        code_max(4)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 30))
def test_8_bit_path_is_bit_identical(seed, magnitude_bits):
    x = rows(seed, magnitude_bits)
    act = nx.requantize_per_token(x)
    codes, mantissa, exponent = int8_formula(x)
    assert act.bits == 8
    assert np.array_equal(act.codes, codes) and np.array_equal(act.scale_mantissa, mantissa)
    assert np.array_equal(act.scale_exponent, exponent)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 31))
def test_16_bit_codes_and_step_within_the_bounds(seed, magnitude_bits):
    x = rows(seed, magnitude_bits)
    q = 32767
    act = nx.requantize_per_token(x, bits=16)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    exact = np.where(peak > 0, x * q / np.maximum(peak, 1), 0)
    assert act.bits == 16 and np.all(np.abs(act.codes) <= q)
    assert np.all(np.abs(act.codes - exact) <= 0.5 + q * 2.0 ** -13)
    step = peak[:, 0] / q
    assert np.all(np.abs(act.scale_mantissa * np.ldexp(1.0, act.scale_exponent) - step) <= step * 2.0 ** -13)
    assert np.all(act.scale_mantissa < 1 << 16)
    back = nx.dequantize_act(act)
    assert np.all(np.abs(back - x) <= (0.5 + 2 * q * 2.0 ** -13) * step[:, None] + 1)


def test_16_bit_codes_are_finer_than_8_bit():
    x = rows(3, 24, (8, 256))
    err8 = np.abs(nx.dequantize_act(nx.requantize_per_token(x)) - x).mean()
    err16 = np.abs(nx.dequantize_act(nx.requantize_per_token(x, bits=16)) - x).mean()
    assert err16 < err8 / 30  # 2**8 finer codes, limited by the reciprocal's 2**-14 relative error


def test_zero_and_extreme_rows_at_16_bits():
    act = nx.requantize_per_token(np.array([[0, 0, 0, 0], [2**31 - 1, -(2**31), 5, 0]]), bits=16)
    assert act.codes[0].tolist() == [0, 0, 0, 0] and act.scale_mantissa[0] == 0
    assert act.codes[1, :2].tolist() == [32767, -32767]


def test_group_accumulator_widths():
    assert group_accumulator_bits(8) == 32 and group_accumulator_bits(16) == 40
    check_group_accumulator(4096, 255, 8)  # Llama-2-7B W8 LM head row, §4.3: 28 bits
    check_group_accumulator(4096, 255, 16)  # the same with A16 codes: 36 bits
    with pytest.raises(OverflowError, match="40-bit accumulator"):
        check_group_accumulator(1 << 17, 1 << 8, 16)
    with pytest.raises(OverflowError, match="32-bit accumulator"):
        check_group_accumulator(1 << 17, 1 << 8, 8)


def test_linear_with_16_bit_codes_tracks_the_float_product():
    g = np.random.default_rng(5)
    x = g.integers(-(40 << 16), 40 << 16, (6, 128))
    w = g.integers(-255, 256, (10, 128))
    scales = np.ldexp(g.integers(1024, 2048, (10, 2)), -g.integers(12, 20, (10, 2))).astype(np.float64)
    mantissa, shift = nx.scale_multipliers(scales)
    weight = nx.IntegerWeight(w, mantissa, shift, 64)
    act = nx.requantize_per_token(x, bits=16)
    sums = nx.group_sums(act.codes, weight, act_bits=16)
    assert np.array_equal(sums, np.einsum("tgi,ogi->tog", act.codes.reshape(6, 2, 64), w.reshape(10, 2, 64)))
    out = nx.linear(act, weight)
    real_w = w * np.repeat(scales, 64, axis=1)
    reference = nx.dequantize_act(act) @ real_w.T
    bound = (np.abs(nx.dequantize_act(act)) @ np.abs(real_w).T) * 2.0 ** -14 + 1
    assert np.all(np.abs(out - reference) <= bound)
    a8_error = np.abs(nx.linear(nx.requantize_per_token(x), weight) - x @ real_w.T).max()
    assert np.abs(out - x @ real_w.T).max() < a8_error / 30
