"""Byte layout of one layer's key or value cache stream, the same in HBM and in the KV buffer
(docs/isa.md, "KV stream region").

Sections, 64-byte aligned from the region start: codes (two 4-bit codes per byte, ``[capacity,
KV*D/2]``, or one 8-bit code per byte; ACT32 streams hold int32 ``[capacity, KV*D]`` here instead), statistics (int32 (scale,
offset) per token ``[capacity, KV, 2]``, or per block of B tokens ``[capacity/B, KV, D, 2]``) and,
per channel, the staging area int32 ``[B, KV, D]`` holding the unfinished block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class LambdaStreamLayout:
    """One layer's keys or values under Λ attention (S sinks, window W), for prefill chunks of at
    most C tokens; the same layout in HBM and in the KV buffer.

    Token streams (per-token codes or ACT32): S + W + C token slots, token j in slot ``j`` (a sink)
    or ``S + (j - S) mod (W + C)``. Per-channel streams: a sink store (blocks of ``Bs = min(B, S)``
    in ``ceil(S / Bs)`` block slots, raw ACT32 of every sink token) and a window store (blocks of
    ``Bw = min(B, W)`` in ``ceil(W / Bw) + ceil(C / Bw) + 1`` block slots, block k in slot
    ``k mod slots``, raw ACT32 of the last ``Bw + C`` window tokens, token j in row
    ``(j - S) mod (Bw + C)``). The C extra slots keep every key a chunk's queries still see while
    the chunk's own tokens are stored. Which tokens are held and when a block is read quantized
    follow llmfab.sim.kv_ring (Λ shape, BlockLayout).
    """

    mode: KvMode
    sinks: int
    window: int
    chunk: int
    kv_heads: int
    head_dim: int
    block_tokens: int
    bits: int = 4

    @property
    def width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def code_row_bytes(self) -> int:
        return 4 * self.width if self.mode is KvMode.ACT32 else self.width * self.bits // 8

    @property
    def token_slots(self) -> int:
        return self.sinks + self.window + self.chunk

    def token_slot(self, index):
        """Token-stream slot of stream positions ``index`` (numpy array)."""
        j = np.asarray(index, dtype=np.int64)
        return np.where(j < self.sinks, j, self.sinks + (j - self.sinks) % (self.window + self.chunk))

    # per-channel stores
    @property
    def sink_block(self) -> int:
        return min(self.block_tokens, self.sinks) if self.sinks else 0

    @property
    def window_block(self) -> int:
        return min(self.block_tokens, self.window)

    @property
    def sink_slots(self) -> int:
        return -(-self.sinks // self.sink_block) if self.sinks else 0

    @property
    def window_slots(self) -> int:
        b = self.window_block
        return -(-self.window // b) + -(-self.chunk // b) + 1

    @property
    def raw_ring(self) -> int:
        return self.window_block + self.chunk

    def sections(self) -> dict[str, tuple[int, int]]:
        """name -> (offset, bytes)."""
        w = self.width
        if self.mode is KvMode.KV4_CHANNEL:
            sizes = {
                "sink_codes": self.sink_slots * self.sink_block * self.code_row_bytes,
                "sink_stats": self.sink_slots * 8 * w,
                "sink_raw": self.sinks * 4 * w,
                "window_codes": self.window_slots * self.window_block * self.code_row_bytes,
                "window_stats": self.window_slots * 8 * w,
                "window_raw": self.raw_ring * 4 * w,
            }
        else:
            sizes = {"codes": self.token_slots * self.code_row_bytes,
                     "stats": self.token_slots * 8 * self.kv_heads if self.mode is KvMode.KV4_TOKEN else 0}
        out, offset = {}, 0
        for name, size in sizes.items():
            out[name] = (offset, size)
            offset = align(offset + size)
        return out

    @property
    def nbytes(self) -> int:
        return align(max(offset + size for offset, size in self.sections().values()))
