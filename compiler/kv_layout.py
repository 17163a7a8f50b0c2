"""Byte layout of one layer's key or value cache stream, the same in HBM and in the KV buffer
(docs/isa.md, "KV stream region").

Sections, 64-byte aligned from the region start: codes (two 4-bit codes per byte, ``[capacity,
KV*D/2]``, or one 8-bit code per byte; ACT32 streams hold int32 ``[capacity, KV*D]`` here instead), statistics (int32 (scale,
offset) per token ``[capacity, KV, 2]``, or per block of B tokens ``[capacity/B, KV, D, 2]``) and,
per channel, the staging area int32 ``[B, KV, D]`` holding the unfinished block.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmfab.compiler.isa import KvMode
from llmfab.compiler.weight_tiles import align


@dataclass(frozen=True)
class KvStreamLayout:
    """One stream: storage mode, slot capacity, KV heads, head_dim, block tokens B, code bits (4 or 8)."""

    mode: KvMode
    capacity: int
    kv_heads: int
    head_dim: int
    block_tokens: int
    bits: int = 4

    def __post_init__(self) -> None:
        if self.mode is KvMode.KV4_CHANNEL and self.capacity % self.block_tokens:
            raise ValueError(f"a per-channel stream's capacity {self.capacity} must be a multiple of "
                             f"its block of {self.block_tokens} tokens")

    @property
    def width(self) -> int:
        """Elements per token: KV * D."""
        return self.kv_heads * self.head_dim

    @property
    def code_row_bytes(self) -> int:
        """Bytes of one slot's codes (or ACT32 values)."""
        return 4 * self.width if self.mode is KvMode.ACT32 else self.width * self.bits // 8

    @property
    def stat_row_bytes(self) -> int:
        """Bytes of one row of statistics: a token's (per token) or a block's (per channel)."""
        if self.mode is KvMode.KV4_TOKEN:
            return 8 * self.kv_heads
        if self.mode is KvMode.KV4_CHANNEL:
            return 8 * self.width
        return 0

    @property
    def stat_rows(self) -> int:
        if self.mode is KvMode.KV4_TOKEN:
            return self.capacity
        if self.mode is KvMode.KV4_CHANNEL:
            return self.capacity // self.block_tokens
        return 0

    @property
    def staging_bytes(self) -> int:
        return 4 * self.block_tokens * self.width if self.mode is KvMode.KV4_CHANNEL else 0

    @property
    def codes_offset(self) -> int:
        return 0

    @property
    def stats_offset(self) -> int:
        return align(self.capacity * self.code_row_bytes)

    @property
    def staging_offset(self) -> int:
        return self.stats_offset + align(self.stat_rows * self.stat_row_bytes)

    @property
    def nbytes(self) -> int:
        return self.staging_offset + align(self.staging_bytes)
