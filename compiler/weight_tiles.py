"""Packed weight tiles: the bytes a GEMM instruction reads from the weight buffer (docs/isa.md).

A tile is N output rows x K input columns of a linear layer (K a multiple of the group size).
Sections, each at a 64-byte aligned offset from the tile start: packed codes (docs/packed_format.md
bitstream per row; K/2 kept codes under 2:4), 2:4 pattern codes (3-bit bitstream per row),
zero points uint8 ``[N, K/g]``, scale mantissas uint16 ``[N, K/g]``, row shifts int8 ``[N]``.
:func:`pack_tile` writes them, :func:`unpack_tile` reads them back into the numerics library's
:class:`~llmfab.sim.linear_ops.IntegerWeight` (through its own conversion functions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.quant.packing import packed_length
from llmfab.sim.linear_ops import IntegerWeight, expand_2to4, signed_weights

ALIGN = 64
PATTERN_BITS = 3


def pack_rows(values, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit integers ``[rows, n]`` -> uint8 ``[rows, ceil(n*bits/8)]`` in the
    little-endian bitstream layout of llmfab.quant.packing.pack_bits (numpy, for whole models)."""
    v = np.asarray(values, dtype=np.uint16)
    if v.size and int(v.max()) >= 1 << bits:
        raise ValueError(f"values up to {int(v.max())} do not fit {bits} bits")
    rows, n = v.shape
    if 8 % bits == 0:  # whole values per byte: OR the shifted lanes together
        per = 8 // bits
        padded = np.zeros((rows, -(-n // per) * per), dtype=np.uint8)
        padded[:, :n] = v
        lanes = padded.reshape(rows, -1, per) << (bits * np.arange(per, dtype=np.uint8))
        return np.bitwise_or.reduce(lanes, axis=2).astype(np.uint8)
    stream = ((v[..., None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8).reshape(rows, n * bits)
    return np.packbits(stream, axis=1, bitorder="little")[:, :packed_length(n, bits)]


def unpack_rows(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: uint8 ``[rows, bytes]`` -> int64 ``[rows, count]``."""
    packed = np.asarray(packed, dtype=np.uint8)
    if 8 % bits == 0:
        per = 8 // bits
        lanes = (packed[..., None] >> (bits * np.arange(per, dtype=np.uint8))) & ((1 << bits) - 1)
        return lanes.reshape(packed.shape[0], -1)[:, :count].astype(np.int64)
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, bitorder="little")[:, :count * bits]
    weights = (1 << np.arange(bits, dtype=np.int64))
    return stream.reshape(packed.shape[0], count, bits).astype(np.int64) @ weights


def align(n: int, to: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return -(-n // to) * to


@dataclass(frozen=True)
class TileShape:
    """What a GEMM needs to know to read a tile: N rows, K columns, group size, code width, 2:4, doubled zeros."""

    rows: int
    cols: int
    group_size: int
    bits: int
    sparse: bool
    half_zero: bool

    @property
    def groups(self) -> int:
        return self.cols // self.group_size

    @property
    def codes_per_row(self) -> int:
        return self.cols // 2 if self.sparse else self.cols

    def sections(self) -> dict[str, tuple[int, int]]:
        """name -> (offset, bytes) of every section."""
        sizes = {
            "codes": self.rows * packed_length(self.codes_per_row, self.bits),
            "patterns": self.rows * packed_length(self.cols // 4, PATTERN_BITS) if self.sparse else 0,
            "zeros": self.rows * self.groups,
            "mantissas": 2 * self.rows * self.groups,
            "row_shifts": self.rows,
        }
        out, offset = {}, 0
        for name, size in sizes.items():
            out[name] = (offset, size)
            offset = align(offset + size)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the tile (a multiple of 64)."""
        offset, size = self.sections()["row_shifts"]
        return align(offset + size)


def pack_tile(shape: TileShape, codes, zeros, mantissas, row_shifts, patterns=None) -> bytes:
    """Stored integer fields of N rows (numpy, as in QuantizedWeight plus the §5.1 multipliers)
    -> the tile's bytes."""
    out = np.zeros(shape.nbytes, dtype=np.uint8)
    sections = shape.sections()

    def put(name: str, data: np.ndarray) -> None:
        offset, size = sections[name]
        flat = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if flat.size != size:
            raise ValueError(f"tile section {name}: {flat.size} bytes, expected {size}")
        out[offset:offset + size] = flat

    put("codes", pack_rows(codes, shape.bits))
    if shape.sparse:
        put("patterns", pack_rows(patterns, PATTERN_BITS))
    put("zeros", np.asarray(zeros, dtype=np.uint8))
    if np.any(np.asarray(mantissas) >= 1 << 16) or np.any(np.asarray(mantissas) < 0):
        raise ValueError("scale mantissas must be unsigned 16-bit")
    put("mantissas", np.asarray(mantissas, dtype=np.uint16))
    put("row_shifts", np.asarray(row_shifts, dtype=np.int8))
    return out.tobytes()


def unpack_tile(shape: TileShape, data) -> IntegerWeight:
    """Tile bytes -> IntegerWeight ``[N, K]`` (signed values with 0 at pruned lanes, §4)."""
    data = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    sections = shape.sections()

    def get(name: str, dtype) -> np.ndarray:
        offset, size = sections[name]
        return data[offset:offset + size].view(dtype)

    n = shape.rows
    codes = unpack_rows(get("codes", np.uint8).reshape(n, -1), shape.bits, shape.codes_per_row)
    zeros = get("zeros", np.uint8).reshape(n, shape.groups).astype(np.int64)
    per_group = shape.codes_per_row // shape.groups
    values = signed_weights(2 * codes if shape.half_zero else codes, zeros, per_group)
    if shape.sparse:
        patterns = unpack_rows(get("patterns", np.uint8).reshape(n, -1), PATTERN_BITS, shape.cols // 4)
        values = expand_2to4(values, patterns)
    mantissas = get("mantissas", np.uint16).reshape(n, shape.groups).astype(np.int64)
    row_shifts = get("row_shifts", np.int8).astype(np.int64)
    return IntegerWeight(values, mantissas, row_shifts, shape.group_size)
