"""Integer linear layers: per-token int8 (or int16, A16) requantization, weight preparation (signed
codes, 2:4 lane selection, group-scale multipliers), the grouped MAC with scale application,
embeddings (docs/numerics.md §3, §4, §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.sim.fixed_point import (
    ACT32,
    check_range,
    normalize_mantissa,
    round_shift,
    saturate_to,
)
from llmfab.sim.special_functions import reciprocal

ACT_BITS = (8, 16)  # activation code widths: A8 everywhere, A16 for an LM head that needs it (§3)
INV127 = 66052  # round(2**23 / 127): the activation scale m / 127 as a 16-bit mantissa (§3)
INV32767 = 65538  # round(2**31 / 32767): the same for 16-bit codes (§3.1)
STEP_RECIPROCALS = {8: INV127, 16: INV32767}  # round(2**(15 + bits) / code_max(bits))
GROUP_ACCUMULATOR_BITS = 32  # signed width of a group's integer sum P with int8 codes, widest case (§4.3)
GROUP_ACCUMULATOR_BITS_A16 = 40  # the same with int16 codes (§4.3); keeps Σ_g P_g·M_g inside int64
ROW_ACCUMULATOR_BITS = 48  # signed width of the scaled row sum Y (DSP48E2 accumulator, §5.2)
# kept lanes per 2:4 pattern code, numbered as in llmfab.quant.sparse_index
PATTERN_LANES = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], dtype=np.int64)


def code_max(bits: int) -> int:
    """Largest code of a ``bits``-wide symmetric activation code: ``2**(bits-1) - 1`` (127, 32767)."""
    if bits not in ACT_BITS:
        raise ValueError(f"activation codes are {' or '.join(map(str, ACT_BITS))} bits, not {bits}")
    return (1 << (bits - 1)) - 1


def group_accumulator_bits(act_bits: int) -> int:
    """Signed width of the group sum accumulator for ``act_bits``-wide activation codes (§4.3)."""
    code_max(act_bits)
    return GROUP_ACCUMULATOR_BITS if act_bits == 8 else GROUP_ACCUMULATOR_BITS_A16


def check_group_accumulator(group_size: int, weight_peak: int, act_bits: int) -> None:
    """Raise OverflowError when a group sum ``g * code_max * max|w|`` can overflow its accumulator (§4.3)."""
    bits = group_accumulator_bits(act_bits)
    bound = group_size * code_max(act_bits) * weight_peak
    if bound >= 1 << (bits - 1):
        raise OverflowError(f"group sums up to {bound} exceed the {bits}-bit accumulator")


@dataclass(frozen=True, eq=False)
class ActCodes:
    """Per-token int8 (or int16) codes of an ACT32 tensor and the step of each token (§3).

    codes: int64 ``[..., n]`` in ``[-code_max(bits), code_max(bits)]``; the token's step in ACT32
    units is ``scale_mantissa * 2**scale_exponent`` (mantissa 0 for an all-zero token).
    """

    codes: np.ndarray
    scale_mantissa: np.ndarray
    scale_exponent: np.ndarray
    bits: int = 8


@dataclass(frozen=True, eq=False)
class IntegerWeight:
    """A weight matrix as the engine holds it (§4, §5.1).

    values: int64 ``[out, in]`` signed integer weights ``c - z`` (``2c - 2z`` with half-integer zero
    points), 0 at 2:4-pruned lanes. scale_mantissa: int64 ``[out, in/group_size]`` unsigned 16-bit
    multipliers. row_shift: int64 ``[out]``; a weight means ``values * scale_mantissa * 2**-row_shift``.
    """

    values: np.ndarray
    scale_mantissa: np.ndarray
    row_shift: np.ndarray
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the dense matrix."""
        return self.values.shape


def requantize_per_token(x, bits: int = 8) -> ActCodes:
    """ACT32 ``[..., n]`` -> ``bits``-wide codes (8, or 16 for A16) with one step per token (§3).

    With ``Q = code_max(bits)`` (127 or 32767): ``m = max|x|``; ``(r, e) = reciprocal(m)``; ``x``
    is pre-shifted by ``s0 = max(0, e - 15)`` to at most 17 bits and
    ``q = satQ(rshr(rshr(x, s0) * (Q * r), 16 + e - s0))``. The step is ``m / Q`` as
    ``A * 2**(e - 13 - bits)`` with ``A = rshr(u * round(2**(15 + bits) / Q), 17)``, u the top 16
    bits of m (INV127 for 8 bits, INV32767 for 16).
    """
    q_max = code_max(bits)
    x = np.asarray(x, dtype=np.int64)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    nonzero = peak > 0
    safe = np.where(nonzero, peak, 1)
    r, e = reciprocal(safe)
    pre_shift = np.maximum(e - 15, 0)
    narrow = round_shift(x, pre_shift)
    codes = round_shift(narrow * (q_max * r), 16 + e - pre_shift)
    codes = np.clip(codes, -q_max, q_max) * nonzero
    u, e_m = normalize_mantissa(safe, 16)
    mantissa = round_shift(u * STEP_RECIPROCALS[bits], 17) * nonzero
    return ActCodes(codes, mantissa[..., 0], (e_m - 13 - bits)[..., 0], bits)


def dequantize_act(act: ActCodes) -> np.ndarray:
    """Codes back to ACT32 values (for tests): ``rshr(q * A, -E)``."""
    return round_shift(act.codes * act.scale_mantissa[..., None], -act.scale_exponent[..., None])


def signed_weights(codes, zeros, group_size: int) -> np.ndarray:
    """Codes ``[out, k]`` and zero points ``[out, k / group_size]`` (both as stored) ->
    int64 ``c - z`` (§4.1). With half-integer zero points pass ``2 * codes`` and the doubled zeros."""
    codes = np.asarray(codes, dtype=np.int64)
    zeros = np.asarray(zeros, dtype=np.int64)
    return codes - np.repeat(zeros, group_size, axis=1)


def kept_lanes(pattern_codes) -> np.ndarray:
    """2:4 pattern codes ``[out, in/4]`` -> activation lane of every kept weight ``[out, in/2]`` (§4.2).

    Kept weight ``2b`` of a row reads lane ``4b + first(p)``, kept weight ``2b+1`` reads
    ``4b + second(p)``, with (first, second) the pattern's kept pair.
    """
    p = np.asarray(pattern_codes, dtype=np.int64)
    if p.size and (p.min() < 0 or p.max() > 5):
        raise ValueError("2:4 pattern codes must lie in 0..5")
    base = 4 * np.arange(p.shape[1], dtype=np.int64)
    lanes = PATTERN_LANES[p] + base[None, :, None]
    return lanes.reshape(p.shape[0], -1)


def expand_2to4(kept_values, pattern_codes) -> np.ndarray:
    """Kept signed weights ``[out, in/2]`` -> dense ``[out, in]`` with 0 at pruned lanes (§4.2)."""
    kept_values = np.asarray(kept_values, dtype=np.int64)
    lanes = kept_lanes(pattern_codes)
    dense = np.zeros((kept_values.shape[0], 2 * kept_values.shape[1]), dtype=np.int64)
    np.put_along_axis(dense, lanes, kept_values, axis=1)
    return dense


def scale_multipliers(scales, extra_shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float16 group scales ``[out, groups]`` -> (16-bit mantissas ``[out, groups]``, row shifts ``[out]``) (§5.1).

    Per row, ``E = max frexp exponent`` of its scales; ``M = rhu(s * 2**(16 - E))`` (exact for the
    largest scales, round half up for the others) and ``row_shift = 16 - E + extra_shift``.
    """
    s = np.asarray(scales, dtype=np.float64)
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError("group scales must be finite and non-negative")
    _, exponent = np.frexp(s)
    top = np.where(s > 0, exponent, np.iinfo(np.int64).min).max(axis=1)
    top = np.where(top == np.iinfo(np.int64).min, 0, top)
    mantissa = np.floor(np.ldexp(s, (16 - top)[:, None]) + 0.5).astype(np.int64)
    return mantissa, (16 - top + extra_shift).astype(np.int64)


def prepare_weight(codes, scales, zeros, group_size: int, pattern_codes=None,
                   zero_halves: bool = False) -> IntegerWeight:
    """A stored quantized weight (llmfab.quant.weight_quant.QuantizedWeight fields as numpy) ->
    :class:`IntegerWeight` (§4.1, §4.2, §5.1). Under 2:4, ``codes`` are ``[out, in/2]`` kept codes
    and a group holds ``group_size / 2`` of them."""
    codes = np.asarray(codes, dtype=np.int64)
    per_group = group_size // 2 if pattern_codes is not None else group_size
    values = signed_weights(2 * codes if zero_halves else codes, zeros, per_group)
    if pattern_codes is not None:
        values = expand_2to4(values, pattern_codes)
    mantissa, row_shift = scale_multipliers(scales, extra_shift=1 if zero_halves else 0)
    return IntegerWeight(values, mantissa, row_shift, group_size)


def group_sums(codes, weight: IntegerWeight, act_bits: int = 8) -> np.ndarray:
    """``P[t, o, g] = Σ_{i in group g} q[t, i] * w[o, i]`` as int64 ``[T, out, groups]`` (§4.3),
    for ``act_bits``-wide codes.

    Integer-valued float64 matmuls are exact here: every partial sum is below 2**53.
    """
    q = np.asarray(codes, dtype=np.int64)
    out, n = weight.values.shape
    g = weight.group_size
    groups = n // g
    check_group_accumulator(g, int(np.abs(weight.values).max(initial=0)), act_bits)
    qg = q.reshape(-1, groups, g).transpose(1, 0, 2).astype(np.float64)  # [G, T, g]
    wg = weight.values.reshape(out, groups, g).transpose(1, 2, 0).astype(np.float64)  # [G, g, out]
    return np.matmul(qg, wg).transpose(1, 2, 0).astype(np.int64)


def linear(act: ActCodes, weight: IntegerWeight) -> np.ndarray:
    """int8 (or int16) activations ``[..., in]`` x integer weight -> ACT32 ``[..., out]`` (§5.2).

    ``Y = Σ_g P_g * M_g`` (48-bit), then ``y = sat32(rshr(Y * A, row_shift - E))`` with the token's
    step ``A * 2**E``.
    """
    lead = act.codes.shape[:-1]
    sums = group_sums(act.codes.reshape(-1, act.codes.shape[-1]), weight, act.bits)
    rows = np.einsum("tog,og->to", sums, weight.scale_mantissa)
    check_range(rows, ROW_ACCUMULATOR_BITS, "scaled row sum Y")
    mantissa = act.scale_mantissa.reshape(-1, 1)
    shift = weight.row_shift[None, :] - act.scale_exponent.reshape(-1, 1)
    out = shift_saturate(rows * mantissa, shift)
    return out.reshape(*lead, weight.shape[0])


def shift_saturate(values, shift) -> np.ndarray:
    """``sat32(rshr(v, shift))``; a negative shift saturates instead of overflowing (§1)."""
    v = np.asarray(values, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if not s.size or s.min() >= 0:  # no left shift, nothing to widen: round, then saturate
        return saturate_to(round_shift(v, s), ACT32)
    left = np.minimum(np.maximum(-s, 0), 62)
    upper = np.right_shift(np.int64(ACT32.max_int), left)
    lower = np.right_shift(np.int64(ACT32.min_int), left)
    widening = s < 0
    shifted = saturate_to(round_shift(np.where(widening, np.clip(v, lower, upper), v), s), ACT32)
    return np.where(widening & (v > upper), ACT32.max_int, np.where(widening & (v < lower), ACT32.min_int, shifted))


def embed(ids, table: IntegerWeight) -> np.ndarray:
    """Token ids ``[...]`` -> ACT32 rows ``sat32(rshr(w * M, row_shift - 16))`` of a table whose group
    is a whole row (§5.3)."""
    ids = np.asarray(ids, dtype=np.int64)
    if table.scale_mantissa.shape[1] != 1:
        raise ValueError("embedding tables carry one scale per row")
    rows = table.values[ids] * table.scale_mantissa[ids]
    return shift_saturate(rows, (table.row_shift[ids] - ACT32.frac)[..., None])
