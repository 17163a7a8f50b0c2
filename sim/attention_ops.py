"""KV-cache quantization (4- or 8-bit codes) and integer softmax attention (docs/numerics.md §6.4, §7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.sim.fixed_point import ACT32, check_range, round_shift, saturate_to
from llmfab.sim.linear_ops import requantize_per_token
from llmfab.sim.special_functions import exp2, reciprocal

KV_CODE_BITS = (4, 8)  # KV4 and KV8 (§6.4)
KV_NARROW_BITS = 17  # x - offset is narrowed to 17 unsigned bits before the multiply by 1/scale (§6.4)
EXP2_ARGUMENT_MIN = -(32 << 16)  # exp2 arguments saturate at -32.0 (2**-32 rounds to 0 in Q.16)
SCORE_ACCUMULATOR_BITS = 48  # Σ_d q8 * k (§7.3)
VALUE_ACCUMULATOR_BITS = 50  # Σ_j p * v (§7.5)


@dataclass(frozen=True, eq=False)
class Kv4Codes:
    """KV codes (4 or 8 bits) with an ACT32 offset and a positive ACT32 step per reduction group (§6.4).

    A value means ``offset + scale * code``; ``scale``/``offset`` keep the reduced axis with size 1.
    """

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class AttentionConstants:
    """``log2(e) / sqrt(head_dim)`` as a 16-bit mantissa and shift (§7.4)."""

    mantissa: int
    shift: int

    @classmethod
    def for_head_dim(cls, head_dim: int) -> "AttentionConstants":
        value = np.log2(np.e) / np.sqrt(head_dim)
        _, top = np.frexp(value)
        shift = int(16 - top)
        return cls(int(np.floor(np.ldexp(value, shift) + 0.5)), shift)


def kv4_quantize(values, axis: int, bits: int = 4) -> Kv4Codes:
    """ACT32 values -> ``bits``-bit codes (4 or 8; M = 2**bits - 1), statistics over ``axis`` (§6.4).

    ``offset = min``; ``scale = max(1, ceil((max - min) / M))``; ``(r, e) = reciprocal(scale)``;
    ``d = x - offset`` pre-shifted by ``s0 = max(0, e - (16 - bits))`` so that it fits 17 bits;
    ``code = clamp(rshr(rshr(d, s0) * r, 16 + e - s0), 0, M)``.
    Round trip: ``|dequantize - x| <= scale * (1/2 + 9 * 2**(bits - 17))``.
    """
    if bits not in KV_CODE_BITS:
        raise ValueError(f"KV codes have {' or '.join(map(str, KV_CODE_BITS))} bits, not {bits}")
    max_code = (1 << bits) - 1
    x = np.asarray(values, dtype=np.int64)
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    scale = np.maximum(-((lo - hi) // max_code), 1)  # ceil division
    r, e = reciprocal(scale)
    pre_shift = np.maximum(e + bits + 1 - KV_NARROW_BITS, 0)  # x - lo < 2**(bits + e + 1)
    narrow = round_shift(x - lo, pre_shift)
    codes = np.clip(round_shift(narrow * r, 16 + e - pre_shift), 0, max_code)
    return Kv4Codes(codes, scale, lo)


def kv4_dequantize(block: Kv4Codes) -> np.ndarray:
    """``sat32(offset + scale * code)`` as ACT32 (§6.4)."""
    return saturate_to(block.offset + block.scale * block.codes, ACT32)


def attention(q, keys, values, constants: AttentionConstants, visible) -> np.ndarray:
    """Softmax attention with integer scores, exp2 and a reciprocal of the sum (§7).

    Args:
        q: ACT32 ``[H, T, D]`` rotated queries.
        keys, values: ACT32 ``[KV, S, D]`` as read back from the cache (dequantized KV4 or KV8).
        constants: ``log2(e)/sqrt(D)``.
        visible: bool ``[T, S]``, True where query t may attend key s (each row has one True).

    Returns:
        ACT32 ``[H, T, D]``.
    """
    heads, kv_heads = q.shape[0], keys.shape[0]
    group = heads // kv_heads
    act = requantize_per_token(q)  # per (head, token) over D (§7.2)
    k = np.repeat(np.asarray(keys, dtype=np.int64), group, axis=0)
    v = np.repeat(np.asarray(values, dtype=np.int64), group, axis=0)
    scores = np.matmul(act.codes.astype(np.float64), k.transpose(0, 2, 1).astype(np.float64)).astype(np.int64)
    check_range(scores, SCORE_ACCUMULATOR_BITS, "attention score")
    floor_score = np.int64(-(1 << 62))
    masked = np.where(visible[None], scores, floor_score)
    peak = masked.max(axis=-1, keepdims=True)
    factor = round_shift(act.scale_mantissa * constants.mantissa, 16)[..., None]
    shift = (constants.shift - act.scale_exponent)[..., None]
    diff = np.where(visible[None], scores - peak, 0)
    argument = np.maximum(round_shift(diff * factor, shift), EXP2_ARGUMENT_MIN)
    weights = np.where(visible[None], exp2(argument), 0)
    total = weights.sum(axis=-1, keepdims=True)
    r, e = reciprocal(total)
    probs = round_shift(weights * r, e)
    mixed = np.matmul(probs.astype(np.float64), v.astype(np.float64)).astype(np.int64)
    check_range(mixed, VALUE_ACCUMULATOR_BITS, "attention value sum")
    return saturate_to(round_shift(mixed, 16), ACT32)


def causal_visibility(queries: int, keys: int) -> np.ndarray:
    """bool ``[T, S]``: the T queries are the last T of S positions and see keys up to their own."""
    return np.arange(keys)[None, :] <= (keys - queries + np.arange(queries))[:, None]
