"""Divider-free reciprocal and reciprocal square root, exp2, sigmoid and SiLU (docs/numerics.md §6, §7, §10).

All functions are pure and vectorised over numpy int64 arrays. The tables are deterministic
functions of nothing but their index; :func:`reciprocal_table`, :func:`rsqrt_table` and
:func:`exp2_table` build them so that the RTL and HLS generators can emit the same ROMs.
"""

from __future__ import annotations

import functools

import numpy as np

from llmfab.sim.fixed_point import PROB17, bit_length, normalize_mantissa, round_shift


def _rom(build):
    """A table built once and returned read-only (it is a ROM: callers index it, never change it)."""
    @functools.cache
    @functools.wraps(build)
    def table() -> np.ndarray:
        values = build()
        values.setflags(write=False)
        return values

    return table


RECIP_TABLE_BITS = 7  # 128 seeds over [1, 2)
RSQRT_TABLE_BITS = 6  # 64 seeds over [1, 2) and 64 over [2, 4)
EXP2_TABLE_BITS = 7  # 129 knots of 2**f on [0, 1], linear interpolation between them
EXP2_FRAC_BITS = 16  # exp2 argument is Q.16
LOG2E_MANTISSA = 47274  # round(log2(e) * 2**15)
LOG2E_SHIFT = 15
ONE = 1 << PROB17.frac  # 1.0 in Q.16


@_rom
def reciprocal_table() -> np.ndarray:
    """Seeds ``round(2**16 / (1 + (i + 0.5) / 128))`` for i in 0..127 (int64, §6.1)."""
    i = np.arange(1 << RECIP_TABLE_BITS, dtype=np.float64)
    return np.floor(2.0 ** 16 / (1.0 + (i + 0.5) / (1 << RECIP_TABLE_BITS)) + 0.5).astype(np.int64)


def reciprocal(values) -> tuple[np.ndarray, np.ndarray]:
    """``1/m ≈ r * 2**-(16 + e)`` for positive integers m < 2**62 (§6.1).

    m is normalised to its top 16 bits ``u`` (``2**15 <= u < 2**16``, truncated; e is the
    leading-one position), a 128-entry table indexed by bits 14..8 of u gives the seed r0 and one
    Newton step refines it: ``r = r0 + rshr(r0 * (2**31 - u * r0), 31)``.
    Returns ``(r, e)``, r in (2**15, 2**16]; relative error <= 2**-14.
    """
    m = np.asarray(values, dtype=np.int64)
    if np.any(m <= 0):
        raise ValueError("reciprocal takes positive integers")
    u, e = normalize_mantissa(m, 16)
    r0 = reciprocal_table()[np.right_shift(u, 8) - 128]
    error = (np.int64(1) << 31) - u * r0
    return r0 + round_shift(r0 * error, 31), e


@_rom
def rsqrt_table() -> np.ndarray:
    """Seeds ``round(2**16 / sqrt(x))`` at the midpoints of 64 intervals of [1, 2) (entries 0..63)
    and of [2, 4) (entries 64..127); int64 (§6.2)."""
    j = np.arange(1 << RSQRT_TABLE_BITS, dtype=np.float64)
    mid = 1.0 + (j + 0.5) / (1 << RSQRT_TABLE_BITS)
    x = np.concatenate([mid, 2.0 * mid])
    return np.floor(2.0 ** 16 / np.sqrt(x) + 0.5).astype(np.int64)


def rsqrt(values) -> tuple[np.ndarray, np.ndarray]:
    """``1/sqrt(v) ≈ y * 2**-(16 + h)`` for positive integers v < 2**62 (§6.2).

    v is normalised to its top 16 bits u with leading-one position e; an odd e is made even by
    reading u as a value in [2, 4) (``x = u << 1``, ``e - 1``). A 128-entry table indexed by the
    parity and bits 14..9 of u seeds y0; one Newton step
    ``y = y0 + rshr(y0 * (2**31 - x * rshr(y0*y0, 16)), 32)`` refines it. Returns ``(y, h)`` with
    ``h = e_even / 2``; relative error <= 2**-13.
    """
    v = np.asarray(values, dtype=np.int64)
    if np.any(v <= 0):
        raise ValueError("rsqrt takes positive integers")
    u, e = normalize_mantissa(v, 16)
    odd = e & 1
    y0 = rsqrt_table()[odd * 64 + np.right_shift(u, 9) - 64]
    x = np.left_shift(u, odd)  # Q.15 value in [1, 4)
    square = round_shift(y0 * y0, 16)
    error = (np.int64(1) << 31) - x * square
    y = y0 + round_shift(y0 * error, 32)
    return y, np.right_shift(e - odd, 1)


@_rom
def exp2_table() -> np.ndarray:
    """Knots ``round(2**16 * 2**(k/128))`` for k in 0..128 (129 entries, int64, §7.1)."""
    k = np.arange((1 << EXP2_TABLE_BITS) + 1, dtype=np.float64)
    return np.floor(2.0 ** 16 * 2.0 ** (k / (1 << EXP2_TABLE_BITS)) + 0.5).astype(np.int64)


def exp2(z) -> np.ndarray:
    """``2**(z / 2**16)`` in Q.16 (unsigned, 0 ..= 2**16) for Q.16 arguments z <= 0 (§7.1).

    ``z = zi * 2**16 + zf`` (zi = floor); bits 15..9 of zf index the table, bits 8..0 interpolate
    linearly between two knots; the result is ``rshr(v, -zi)``. Relative error <= 2**-15 plus half
    an output LSB.
    """
    z = np.asarray(z, dtype=np.int64)
    if np.any(z > 0):
        raise ValueError("exp2 takes arguments <= 0 (subtract the maximum first)")
    whole = np.right_shift(z, EXP2_FRAC_BITS)
    frac = z - np.left_shift(whole, EXP2_FRAC_BITS)
    interp_bits = EXP2_FRAC_BITS - EXP2_TABLE_BITS
    index = np.right_shift(frac, interp_bits)
    rest = frac & ((1 << interp_bits) - 1)
    table = exp2_table()
    lower = table[index]
    v = lower + round_shift((table[index + 1] - lower) * rest, interp_bits)
    return round_shift(v, -whole)


def exp_neg_abs(x) -> np.ndarray:
    """``exp(-|x|)`` in Q.16 for Q.16 inputs x: ``exp2(-rshr(|x| * LOG2E_MANTISSA, 15))`` (§7.2)."""
    a = np.abs(np.asarray(x, dtype=np.int64))
    return exp2(-round_shift(a * LOG2E_MANTISSA, LOG2E_SHIFT))


def sigmoid(x) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in Q.16 (0 ..= 2**16) for Q.16 inputs x (§10).

    t = exp(-|x|); the reciprocal of ``2**16 + t`` (in [2**16, 2**17]) gives ``R = 1/(1+t)`` as
    ``rshr(r, e - 16)``; the result is R for x >= 0 and ``2**16 - R`` for x < 0.
    """
    x = np.asarray(x, dtype=np.int64)
    t = exp_neg_abs(x)
    r, e = reciprocal(ONE + t)
    positive = round_shift(r, e - 16)
    return np.where(x >= 0, positive, ONE - positive)


def silu(x) -> np.ndarray:
    """``x * sigmoid(x)``: Q.16 in, Q.16 out as int64, ``rshr(x * sigmoid(x), 16)`` (§10)."""
    x = np.asarray(x, dtype=np.int64)
    return round_shift(x * sigmoid(x), 16)


__all__ = ["reciprocal", "rsqrt", "exp2", "exp_neg_abs", "sigmoid", "silu", "reciprocal_table",
           "rsqrt_table", "exp2_table", "bit_length"]
