"""Elementwise and per-token vector operations on ACT32 tensors: RMSNorm, RoPE, residual add,
gated product (docs/numerics.md §6.3, §8, §9, §10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.sim.fixed_point import ACT32, TRIG18, bit_length, round_shift, saturate, saturate_to
from llmfab.sim.special_functions import rsqrt

NORM_INPUT_BITS = 16  # RMSNorm squares the row narrowed to 16-bit signed (§6.3)
GAMMA_BITS = 18  # norm gains: signed, |gamma_int| < 2**17 (DSP48E2 B port)


@dataclass(frozen=True, eq=False)
class NormWeight:
    """RMSNorm constants of one norm (§6.3).

    gain: int64 ``[n]``, ``gamma ≈ gain * 2**-gain_shift`` with ``max|gain|`` in [2**16, 2**17).
    sqrt_n_mantissa / sqrt_n_shift: ``sqrt(n) ≈ mantissa * 2**-shift``, mantissa in [2**15, 2**16).
    eps_scaled: ``round(eps * n * 2**32)``.
    """

    gain: np.ndarray
    gain_shift: int
    sqrt_n_mantissa: int
    sqrt_n_shift: int
    eps_scaled: int


def prepare_norm(gamma, eps: float) -> NormWeight:
    """float gains ``[n]`` and epsilon -> :class:`NormWeight` (rounded half up)."""
    gamma = np.asarray(gamma, dtype=np.float64)
    n = gamma.shape[0]
    peak = float(np.abs(gamma).max(initial=0.0))
    _, top = np.frexp(peak) if peak > 0 else (0.0, 0)
    gain_shift = int(GAMMA_BITS - 1 - top)
    gain = np.clip(np.floor(np.ldexp(gamma, gain_shift) + 0.5), -(1 << 17) + 1, (1 << 17) - 1).astype(np.int64)
    _, root_top = np.frexp(np.sqrt(n))
    sqrt_shift = int(16 - root_top)
    sqrt_mantissa = int(np.floor(np.ldexp(np.sqrt(n), sqrt_shift) + 0.5))
    eps_scaled = int(np.floor(eps * n * 2.0 ** 32 + 0.5))
    return NormWeight(gain, gain_shift, sqrt_mantissa, sqrt_shift, eps_scaled)


def rmsnorm(x, norm: NormWeight) -> np.ndarray:
    """``gamma * x / sqrt(mean(x**2) + eps)`` on ACT32 ``[..., n]`` -> ACT32 (§6.3).

    ``k = max(0, bitlen(max|x|) - 15)``; ``xs = sat16(rshr(x, k))``; ``ss = Σ xs**2 + rshr(eps_scaled, 2k)``
    (48 bits); ``(y, h) = rsqrt(ss)``; ``c = rshr(y * sqrt_n_mantissa, 16)``;
    ``out = sat32(rshr(xs * gain * c, gain_shift + sqrt_n_shift + h - 16))``.
    """
    x = np.asarray(x, dtype=np.int64)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    k = np.maximum(bit_length(peak) - (NORM_INPUT_BITS - 1), 0)
    narrow = saturate(round_shift(x, k), NORM_INPUT_BITS)
    squares = (narrow * narrow).sum(axis=-1, keepdims=True) + round_shift(norm.eps_scaled, 2 * k)
    squares = np.maximum(squares, 1)
    y, half_exp = rsqrt(squares)
    factor = round_shift(y * norm.sqrt_n_mantissa, 16)
    shift = norm.gain_shift + norm.sqrt_n_shift + half_exp - ACT32.frac
    return saturate_to(round_shift(narrow * norm.gain * factor, shift), ACT32)


def rope_tables(inv_freq, positions) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``position * inv_freq`` as TRIG18 (Q.16 in 18 bits) ``[P, D/2]`` (§8).

    Angles and their cos/sin are computed in float64 and rounded half up; the compiler stores the
    tables, so the hardware never evaluates a trigonometric function.
    """
    angle = np.asarray(positions, dtype=np.float64)[:, None] * np.asarray(inv_freq, dtype=np.float64)[None, :]
    return TRIG18.from_float(np.cos(angle)), TRIG18.from_float(np.sin(angle))


def apply_rope(x, cos, sin) -> np.ndarray:
    """Rotate ACT32 ``[..., T, D]`` (half-split pairs i, i + D/2) by TRIG18 tables ``[T, D/2]`` (§8).

    ``out1 = sat32(rshr(x1*cos - x2*sin, 16))``, ``out2 = sat32(rshr(x2*cos + x1*sin, 16))``.
    """
    x = np.asarray(x, dtype=np.int64)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    first = round_shift(x1 * cos - x2 * sin, TRIG18.frac)
    second = round_shift(x2 * cos + x1 * sin, TRIG18.frac)
    return saturate_to(np.concatenate([first, second], axis=-1), ACT32)


def residual_add(a, b) -> np.ndarray:
    """``sat32(a + b)`` of two ACT32 tensors (§9)."""
    return saturate_to(np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64), ACT32)


def multiply(a, b) -> np.ndarray:
    """Elementwise ACT32 product ``sat32(rshr(a * b, 16))`` (§9). Products of |a|, |b| < 2**31
    stay below 2**62."""
    return saturate_to(round_shift(np.asarray(a, dtype=np.int64) * np.asarray(b, dtype=np.int64),
                                   ACT32.frac), ACT32)
