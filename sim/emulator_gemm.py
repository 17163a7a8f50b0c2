"""The GEMM instruction's arithmetic on a decoded weight tile, vectorized for the emulator.

Same integers as :func:`llmfab.sim.linear_ops.linear` (docs/numerics.md §4.3, §5.2): group sums
``P[t, o, g] = Σ q·w`` (checked against the group accumulator: 32 bits for int8 codes, 40 for the
int16 codes of an A16 LM head, which run as two passes of signed bytes ``q = 256·hi + lo``), the scaled row sum
``Y = Σ_g P_g·M_g`` (48 bits, accumulated over K tiles) and ``sat32(rshr(Y·A, row_shift − E))``.
The group sums run as float32 matmuls, exact because every partial sum is an integer below 2**24:
:class:`PreparedTile` cuts each group into ``parts`` equal slices small enough for that bound (from
the tile's largest weight), and adds the slices' sums in int64. A tile is prepared once and cached
by the emulator.
"""

from __future__ import annotations

import numpy as np

from llmfab.sim.fixed_point import ACT_CODE_MAX, check_range
from llmfab.sim.linear_ops import (
    ROW_ACCUMULATOR_BITS,
    ActCodes,
    IntegerWeight,
    check_group_accumulator,
    shift_saturate,
)

FLOAT32_EXACT = 1 << 24
PASS_CODE_MAX = ACT_CODE_MAX + 1  # |code| of one 8-bit pass: int8 codes, or the bytes of int16 codes


class PreparedTile:
    """An IntegerWeight ``[N, K]`` laid out for batched group matmuls ``[G, g, N]``."""

    def __init__(self, weight: IntegerWeight):
        out, n = weight.values.shape
        g = weight.group_size
        self.groups, self.group_size, self.out = n // g, g, out
        self.weight_peak = int(np.abs(weight.values).max(initial=0))
        check_group_accumulator(g, self.weight_peak, 8)
        peak = PASS_CODE_MAX * max(self.weight_peak, 1)
        self.parts = next(p for p in range(1, g + 1) if g % p == 0 and (g // p) * peak < FLOAT32_EXACT)
        self.slices, self.slice_size = self.groups * self.parts, g // self.parts
        self.weights = np.ascontiguousarray(
            weight.values.reshape(out, self.slices, self.slice_size).transpose(1, 2, 0), dtype=np.float32)
        self.mantissa = np.ascontiguousarray(weight.scale_mantissa.T)  # [G, N]
        self.row_shift = weight.row_shift
        self.nbytes = self.weights.nbytes

    def row_sums(self, codes: np.ndarray, bits: int = 8) -> np.ndarray:
        """int8 (``bits`` 16: int16) codes ``[T, K]`` -> ``Y = Σ_g P_g·M_g`` as int64 ``[T, N]``.

        int16 codes take two passes over signed bytes, ``lo = ((q + 128) mod 256) - 128`` and
        ``hi = (q - lo) / 256``: ``Y = 256·Y_hi + Y_lo``, the same integers (docs/numerics.md §4.3).
        """
        if bits == 16:
            check_group_accumulator(self.group_size, self.weight_peak, 16)
            codes = np.asarray(codes, dtype=np.int64)
            low = ((codes + 128) & 0xFF) - 128
            return 256 * self.byte_row_sums((codes - low) >> 8) + self.byte_row_sums(low)
        if bits != 8:
            raise ValueError(f"GEMM takes 8- or 16-bit activation codes, not {bits}")
        return self.byte_row_sums(codes)

    def byte_row_sums(self, codes: np.ndarray) -> np.ndarray:
        """Codes within ±128 ``[T, K]`` -> ``Σ_g P_g·M_g`` as int64 ``[T, N]`` (float32 matmuls, exact)."""
        t = codes.shape[0]
        q = np.ascontiguousarray(codes.reshape(t, self.slices, self.slice_size).transpose(1, 0, 2), dtype=np.float32)
        sums = np.matmul(q, self.weights).astype(np.int64)  # [G * parts, T, N]
        if self.parts > 1:
            sums = sums.reshape(self.groups, self.parts, t, self.out).sum(axis=1)
        if self.groups == 1:
            return sums[0] * self.mantissa[0]
        return np.einsum("gtn,gn->tn", sums, self.mantissa)


def finish_rows(rows: np.ndarray, act: ActCodes, row_shift: np.ndarray) -> np.ndarray:
    """Scaled row sums ``[T, N]`` -> ACT32 outputs with the tokens' activation steps (§5.2)."""
    check_range(rows, ROW_ACCUMULATOR_BITS, "scaled row sum Y")
    mantissa = act.scale_mantissa.reshape(-1, 1)
    shift = row_shift[None, :] - act.scale_exponent.reshape(-1, 1)
    return shift_saturate(rows * mantissa, shift)
