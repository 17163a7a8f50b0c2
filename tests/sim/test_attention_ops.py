"""KV-cache quantization of the integer numerics at 4 and 8 bits (docs/numerics.md §6.4): the 4-bit
codes are those of the original KV4 formula, 8-bit codes track float rounding within the bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.sim import numerics as nx
from llmfab.sim.fixed_point import round_shift
from llmfab.sim.special_functions import reciprocal

FAST = settings(max_examples=60, deadline=None)


def act32_values(seed: int, magnitude_bits: int, shape=(3, 32, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(1 << magnitude_bits), 1 << magnitude_bits, shape)


def original_kv4_codes(x: np.ndarray, axis: int) -> np.ndarray:
    """The KV4 formula as first specified: scale = ceil(range / 15), pre-shift max(0, e - 12)."""
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    scale = np.maximum(-((lo - hi) // 15), 1)
    r, e = reciprocal(scale)
    s0 = np.maximum(e - 12, 0)
    return np.clip(round_shift(round_shift(x - lo, s0) * r, 16 + e - s0), 0, 15)


def code_error_bound(bits: int) -> float:
    """Largest |code - (x - offset) / scale| of §6.4: rounding, reciprocal and pre-shift errors."""
    return 0.5 + 9 * 2.0 ** (bits - 17)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.sampled_from([-1, -2]))
def test_4_bit_codes_are_unchanged(seed, magnitude_bits, axis):
    x = act32_values(seed, magnitude_bits)
    assert np.array_equal(nx.kv4_quantize(x, axis).codes, original_kv4_codes(x, axis))
    assert np.array_equal(nx.kv4_quantize(x, axis, bits=4).codes, original_kv4_codes(x, axis))


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 31), st.sampled_from([-1, -2]), st.sampled_from([4, 8]))
def test_codes_track_float_rounding_within_the_bound(seed, magnitude_bits, axis, bits):
    x = act32_values(seed, magnitude_bits)
    block = nx.kv4_quantize(x, axis, bits=bits)
    max_code = (1 << bits) - 1
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    assert np.array_equal(block.offset, lo)
    assert np.array_equal(block.scale, np.maximum(np.ceil((hi - lo) / max_code), 1))
    assert block.codes.min() >= 0 and block.codes.max() <= max_code
    exact = (x - lo) / block.scale  # float reference code before rounding
    assert np.abs(block.codes - exact).max() <= code_error_bound(bits)
    assert np.all(np.abs(nx.kv4_dequantize(block) - x) <= block.scale * code_error_bound(bits))
    # away from rounding ties the integer code is the float reference's round-to-nearest
    clear = np.abs(exact - np.floor(exact) - 0.5) > code_error_bound(bits) - 0.5
    assert np.array_equal(block.codes[clear], np.rint(exact[clear]))


def test_8_bit_codes_use_the_full_range_and_shrink_the_error():
    x = act32_values(7, 20, shape=(4, 64, 64))
    errors = {}
    for bits in (4, 8):
        block = nx.kv4_quantize(x, -1, bits=bits)
        assert block.codes.max() == (1 << bits) - 1 and block.codes.min() == 0
        errors[bits] = np.abs(nx.kv4_dequantize(block) - x).mean()
    assert errors[8] < errors[4] / 12  # ~17x smaller steps


def test_constant_groups_and_large_ranges():
    flat = np.full((2, 5, 8), -123456)
    for bits in (4, 8):
        block = nx.kv4_quantize(flat, -1, bits=bits)
        assert np.array_equal(nx.kv4_dequantize(block), flat) and np.all(block.scale == 1)
    wide = np.array([[-(2**31), 2**31 - 1, 0, 12345]])
    block = nx.kv4_quantize(wide, -1, bits=8)
    assert np.all(np.abs(nx.kv4_dequantize(block) - wide) <= block.scale * code_error_bound(8))


@pytest.mark.parametrize("bits", [3, 16])
def test_unsupported_code_widths_are_rejected(bits):
    with pytest.raises(ValueError, match="4 or 8 bits"):
        nx.kv4_quantize(np.zeros((1, 4), dtype=np.int64), -1, bits=bits)
