"""Compact index of a 2:4 mask and the kept-values form of a 2:4-sparse weight.

A mask is a bool tensor ``[out, in]`` with True for a kept weight. In every group of four
consecutive input columns exactly two are kept, so a group has one of six patterns. A pattern is
stored as a 3-bit code (0.75 bit per weight), numbering the kept position pairs
lexicographically::

    code:  0      1      2      3      4      5
    kept: (0,1)  (0,2)  (0,3)  (1,2)  (1,3)  (2,3)
"""

from __future__ import annotations

import torch

from llmfab.errors import InputError

PATTERNS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))

# _PATTERN_MASKS[code] is the [4] bool mask of the pattern; _CODE_OF_NIBBLE maps the 4-bit
# kept-bit value (bit j set when column j is kept) to its code, -1 when not a 2:4 pattern.
_PATTERN_MASKS = torch.tensor([[j in pair for j in range(4)] for pair in PATTERNS])
_CODE_OF_NIBBLE = torch.full((16,), -1, dtype=torch.int16)
for _code, (_a, _b) in enumerate(PATTERNS):
    _CODE_OF_NIBBLE[(1 << _a) | (1 << _b)] = _code


def check_2to4_in_features(in_features: int, what: str = "weight") -> None:
    """Raise InputError unless ``in_features`` is a positive multiple of 4 (2:4 groups of columns)."""
    if in_features <= 0 or in_features % 4:
        raise InputError(
            f"{what} has {in_features} input features; 2:4 sparsity needs a positive multiple of 4 "
            f"(groups of 4 consecutive input columns). Leave this layer dense or pad it to "
            f"{max(4, (in_features + 3) // 4 * 4)} columns"
        )


def check_2to4_mask(mask: torch.Tensor, what: str = "mask") -> None:
    """Raise InputError unless ``mask`` is a bool ``[out, in]`` tensor keeping exactly 2 of every 4."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise InputError(
            f"{what} has dtype {mask.dtype} and shape {tuple(mask.shape)}; pass a bool [out, in] "
            "tensor with True at kept weights"
        )
    check_2to4_in_features(mask.shape[1], what)
    kept = mask.reshape(mask.shape[0], -1, 4).sum(dim=-1)
    if bool((kept != 2).any()):
        row, group = (kept != 2).nonzero()[0].tolist()
        raise InputError(
            f"{what} keeps {int(kept[row, group])} of the 4 columns {4 * group}..{4 * group + 3} in row "
            f"{row}; a 2:4 mask keeps exactly 2 in every group. Build it with a 2:4 mask function"
        )


def encode_2to4_mask(mask: torch.Tensor) -> torch.Tensor:
    """Encode a 2:4 mask as pattern codes.

    Args:
        mask: bool ``[out, in]``, exactly 2 True in every group of 4 consecutive columns.

    Returns:
        uint8 ``[out, in/4]`` with entries in 0..5 (see the module docstring for the numbering).
    """
    check_2to4_mask(mask)
    groups = mask.reshape(mask.shape[0], -1, 4).to(torch.int16)
    nibble = (groups << torch.arange(4, dtype=torch.int16, device=mask.device)).sum(dim=-1)
    return _CODE_OF_NIBBLE.to(mask.device)[nibble.long()].to(torch.uint8)


def decode_2to4_mask(codes: torch.Tensor) -> torch.Tensor:
    """Decode pattern codes back into a mask.

    Args:
        codes: integer ``[out, in/4]`` with entries in 0..5.

    Returns:
        bool ``[out, in]``.
    """
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise InputError(
            f"2:4 codes have dtype {codes.dtype} and shape {tuple(codes.shape)}; pass the uint8 "
            "[out, in/4] output of encode_2to4_mask"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 5):
        raise InputError(
            f"2:4 codes span [{int(codes.min())}, {int(codes.max())}]; only 0..5 name a pattern. "
            "The index is corrupt or was not made by encode_2to4_mask"
        )
    out, groups = codes.shape
    return _PATTERN_MASKS.to(codes.device)[codes.long()].reshape(out, 4 * groups)


def compress_2to4(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep only the masked-in weights.

    Args:
        weight: float ``[out, in]``.
        mask: bool ``[out, in]`` 2:4 mask (True = kept).

    Returns:
        ``[out, in/2]`` of weight's dtype: the kept values of each row in original column order.
    """
    check_2to4_mask(mask)
    if weight.shape != mask.shape:
        raise InputError(
            f"weight shape {tuple(weight.shape)} differs from mask shape {tuple(mask.shape)}; "
            "pass the mask that was computed for this weight"
        )
    return weight[mask].reshape(weight.shape[0], weight.shape[1] // 2)


def decompress_2to4(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter kept values back into a dense matrix with zeros at pruned positions.

    Args:
        values: ``[out, in/2]`` kept values in original column order (any dtype).
        mask: bool ``[out, in]`` 2:4 mask.

    Returns:
        ``[out, in]`` of values' dtype.
    """
    check_2to4_mask(mask)
    if values.shape != (mask.shape[0], mask.shape[1] // 2):
        raise InputError(
            f"kept values have shape {tuple(values.shape)} but the mask {tuple(mask.shape)} needs "
            f"{(mask.shape[0], mask.shape[1] // 2)}; pass the output of compress_2to4 for this mask"
        )
    dense = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    dense[mask] = values.reshape(-1)
    return dense
