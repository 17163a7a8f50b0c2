"""Bit packing of small unsigned integers into uint8 bytes.

Values are packed along the last axis as one continuous little-endian bitstream: element ``i``
of a row occupies stream bits ``i*b .. i*b+b-1`` (least significant bit first), and stream bit
``k`` is bit ``k % 8`` of byte ``k // 8``. The tail of the last byte is zero. For b = 2, 4, 8 this
means element ``i`` of a byte sits at bits ``b*i .. b*i+b-1``; for b = 3 elements cross byte
boundaries. docs/packed_format.md describes the layout with worked examples.
"""

from __future__ import annotations

import torch

from llmfab.errors import InputError

SUPPORTED_BITS = (2, 3, 4, 8)

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def packed_length(count: int, bits: int) -> int:
    """Number of bytes that hold ``count`` values of ``bits`` bits each (ceil(count*bits/8))."""
    _check_bits(bits)
    if count < 0:
        raise InputError(f"count {count} is negative; pass the number of packed values (>= 0)")
    return (count * bits + 7) // 8


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit integers along the last axis into bytes.

    Args:
        values: integer tensor ``[..., n]`` (any integer dtype) with every entry in [0, 2**bits - 1].
        bits: 2, 3, 4 or 8.

    Returns:
        uint8 tensor ``[..., ceil(n * bits / 8)]`` in the little-endian bitstream layout.
    """
    _check_bits(bits)
    if values.dtype not in _INTEGER_DTYPES:
        raise InputError(
            f"values to pack have dtype {values.dtype}; pass an integer tensor (e.g. uint8 codes)"
        )
    if values.dim() == 0:
        raise InputError("values to pack is a scalar; pass a tensor with at least one axis")
    if values.numel() > 0:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > (1 << bits) - 1:
            raise InputError(
                f"values to pack span [{low}, {high}], outside the {bits}-bit range "
                f"[0, {(1 << bits) - 1}]; clamp or requantize them before packing"
            )
    *lead, count = values.shape
    shifts = torch.arange(bits, dtype=torch.int16, device=values.device)
    stream = ((values.to(torch.int16).unsqueeze(-1) >> shifts) & 1).reshape(*lead, count * bits)
    nbytes = packed_length(count, bits)
    pad = nbytes * 8 - count * bits
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    weights = (1 << torch.arange(8, dtype=torch.int16, device=values.device))
    packed = (stream.reshape(*lead, nbytes, 8) * weights).sum(dim=-1)
    return packed.to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: uint8 tensor ``[..., ceil(count * bits / 8)]``.
        bits: 2, 3, 4 or 8 (the width used when packing).
        count: number of values per row to recover.

    Returns:
        uint8 tensor ``[..., count]``.
    """
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise InputError(f"packed tensor has dtype {packed.dtype}; pass the uint8 output of pack_bits")
    if packed.dim() == 0:
        raise InputError("packed tensor is a scalar; pass a tensor with at least one axis")
    expected = packed_length(count, bits)
    if packed.shape[-1] != expected:
        raise InputError(
            f"packed tensor has {packed.shape[-1]} bytes per row but {count} values of {bits} bits "
            f"need {expected}; check the count and bit width used when packing"
        )
    *lead, nbytes = packed.shape
    shifts = torch.arange(8, dtype=torch.int16, device=packed.device)
    stream = ((packed.to(torch.int16).unsqueeze(-1) >> shifts) & 1).reshape(*lead, nbytes * 8)
    stream = stream[..., : count * bits].reshape(*lead, count, bits)
    weights = (1 << torch.arange(bits, dtype=torch.int16, device=packed.device))
    return (stream * weights).sum(dim=-1).to(torch.uint8)


def pack_2to4_index(codes: torch.Tensor) -> torch.Tensor:
    """Pack 3-bit 2:4 pattern codes (see :mod:`llmfab.quant.sparse_index`) into bytes.

    Args:
        codes: uint8 ``[out, in/4]`` with entries in 0..5.

    Returns:
        uint8 ``[out, ceil(3 * in/4 / 8)]``, the same bitstream layout as ``pack_bits(codes, 3)``.
    """
    if codes.numel() > 0 and int(codes.max()) > 5:
        raise InputError(
            f"2:4 index codes reach {int(codes.max())}, but only 0..5 name a pattern; "
            "build them with encode_2to4_mask"
        )
    return pack_bits(codes, 3)


def unpack_2to4_index(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of :func:`pack_2to4_index`: uint8 ``[out, ceil(3*groups/8)]`` -> uint8 ``[out, groups]``."""
    codes = unpack_bits(packed, 3, groups)
    if codes.numel() > 0 and int(codes.max()) > 5:
        raise InputError(
            f"packed 2:4 index decodes to code {int(codes.max())}, but only 0..5 name a pattern; "
            "the index bytes are corrupt or were packed with another width"
        )
    return codes


def _check_bits(bits: int) -> None:
    """Raise InputError unless ``bits`` is one of SUPPORTED_BITS."""
    if bits not in SUPPORTED_BITS:
        raise InputError(f"bit width {bits} is not supported; use one of {SUPPORTED_BITS}")
