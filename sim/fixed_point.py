"""Fixed-point primitives of the engine: formats, rounding shift, saturation, normalisation.

Every integer operation of docs/numerics.md is built from these. Arrays are numpy integers;
arithmetic runs in int64 and results are brought back to a format's width by :func:`saturate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedFormat:
    """A two's-complement (or unsigned) fixed-point format: ``bits`` wide, ``frac`` fraction bits.

    The stored integer ``v`` means ``v * 2**-frac`` (docs/numerics.md §2).
    """

    name: str
    bits: int
    frac: int
    signed: bool = True

    @property
    def min_int(self) -> int:
        """Smallest stored integer."""
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_int(self) -> int:
        """Largest stored integer."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def to_float(self, values: np.ndarray) -> np.ndarray:
        """Stored integers -> float64 real values."""
        return np.asarray(values, dtype=np.float64) * 2.0 ** -self.frac

    def from_float(self, values) -> np.ndarray:
        """Real values -> stored int64, rounded half up and saturated (for constants and tests)."""
        scaled = np.floor(np.asarray(values, dtype=np.float64) * 2.0 ** self.frac + 0.5)
        return np.clip(scaled, self.min_int, self.max_int).astype(np.int64)


# §2: activations between operations, residual stream, logits.
ACT32 = FixedFormat("act32", bits=32, frac=16)
# §3: int8 activation codes of a linear layer input, symmetric in [-127, 127].
ACT_CODE_MAX = 127
# §7: exp2 / probabilities / sigmoid, unsigned, 1.0 = 2**16.
PROB17 = FixedFormat("prob17", bits=17, frac=16, signed=False)
# §8: RoPE cos/sin tables, 18 bits signed (the DSP48E2 B port), 1.0 = 2**16.
TRIG18 = FixedFormat("trig18", bits=18, frac=16)
# Mantissa of every scale multiplier (weight group scales, activation scales): 16 bits unsigned.
MANTISSA_BITS = 16


def round_shift(values, shift) -> np.ndarray:
    """Arithmetic right shift by ``shift`` with round-half-up: ``floor((v + 2**(s-1)) / 2**s)``.

    ``shift`` may be an array (broadcast); ``shift == 0`` returns ``v``; a negative shift is a left
    shift (exact; saturate afterwards). int64 in and out (docs/numerics.md §1). A shift beyond 62
    shifts by 62 (an int64 shifted further gives 0 or -1 anyway).
    """
    v = np.asarray(values, dtype=np.int64)
    if isinstance(shift, (int, np.integer)):  # one shift for all (the common case: fewer numpy calls)
        s = int(shift)
        if s > 0:
            s = min(s, 62)
            return np.right_shift(v + (1 << (s - 1)), s)
        return np.left_shift(v, -s) if s < 0 else v.copy()
    s = np.asarray(shift, dtype=np.int64)
    if s.size and s.min() > 0:  # right shifts only
        right = np.minimum(s, 62)
        return np.right_shift(v + np.left_shift(np.int64(1), right - 1), right)
    right = np.minimum(np.maximum(s, 0), 62)
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    shifted = np.right_shift(v + half, right)
    return np.where(s < 0, np.left_shift(v, np.maximum(-s, 0)), shifted)


def clamp(values, lo: int, hi: int) -> np.ndarray:
    """int64 ``values`` limited to ``lo .. hi`` (np.clip's result, with fewer Python-level calls)."""
    return np.minimum(np.maximum(np.asarray(values, dtype=np.int64), lo), hi)


def saturate(values, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp int64 ``values`` to a ``bits``-wide two's-complement (or unsigned) range (§1)."""
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return clamp(values, lo, hi)


def saturate_to(values, fmt: FixedFormat) -> np.ndarray:
    """Clamp to the integer range of ``fmt`` (§1)."""
    return clamp(values, fmt.min_int, fmt.max_int)


def bit_length(values) -> np.ndarray:
    """Position of the leading one plus one, elementwise, for values >= 0 (0 -> 0); int64.

    The hardware's leading-one detector (§1). Exact for all values below 2**62.
    """
    v = np.asarray(values, dtype=np.int64)
    if np.any(v < 0):
        raise ValueError("bit_length takes non-negative integers")
    # frexp is exact for integers below 2**53; above, round-to-nearest in the float conversion can
    # carry into the next power of two, which the correction below undoes.
    _, exponent = np.frexp(v.astype(np.float64))
    exponent = exponent.astype(np.int64)
    too_big = (exponent > 0) & (np.right_shift(v, np.maximum(exponent - 1, 0)) == 0)
    return np.where(v == 0, 0, exponent - too_big)


def normalize_mantissa(values, bits: int = MANTISSA_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Positive integers ``m`` -> ``(u, e)`` with ``u`` the top ``bits`` bits of ``m`` (truncated)
    and ``e = bit_length(m) - 1``, so ``m ≈ u * 2**(e - bits + 1)`` and ``2**(bits-1) <= u < 2**bits``.

    Small values are shifted left (exactly). Zero gives ``(0, 0)``. §1 "normalise".
    """
    m = np.asarray(values, dtype=np.int64)
    e = bit_length(m) - 1
    shift = e - (bits - 1)
    u = np.where(shift >= 0, np.right_shift(m, np.maximum(shift, 0)), np.left_shift(m, np.maximum(-shift, 0)))
    return np.where(m > 0, u, 0), np.where(m > 0, e, 0)


def check_range(values, bits: int, what: str, signed: bool = True) -> None:
    """Raise OverflowError if an intermediate result exceeds the width the spec gives it."""
    v = np.asarray(values, dtype=np.int64)
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise OverflowError(f"{what} spans [{v.min()}, {v.max()}], beyond its {bits}-bit range")
