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

from llmfab.compiler.isa import KvMode, RingPart
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


def _log2(n: int) -> int | None:
    """k with 2^k = n, or None if n is not a power of two."""
    return n.bit_length() - 1 if n > 0 and not n & (n - 1) else None


@dataclass(frozen=True)
class MovedSection:
    """A part of a Λ stream region as LOAD and STORE move it (docs/isa.md, flag RING).

    ``slots`` slots of ``slot_bytes`` from byte ``offset`` of the region; slot 0 holds the first
    token (or block) of ``part``. ``kind`` says which slots a run touches:

    - ``tokens``: one token per slot (codes or statistics, or ACT32 values); a run stores its own
      tokens and loads those its first query still sees (the sinks, and the window from
      ``max(P - W + 1, S)``);
    - ``blocks``: one block of ``2^shift`` tokens per slot (per-channel codes or statistics); a run
      stores the blocks it completes and loads the completed blocks its first query still sees;
    - ``raw``: the ACT32 values of one token per slot, kept until the token's block is quantized; a
      run stores its own tokens and loads the staged tokens of the unfinished block (its first
      position rounded down to a multiple of ``2^align`` tokens from the part's first token);
    - ``whole``: moved whole by every run (blocks that are not a power of two tokens long, which
      the engine cannot address by shifts: only when S or W is shorter than the KV block).

    ``ring``: the slots are reused (the window part); slot of token j is then a ring slot.
    """

    name: str
    part: RingPart
    offset: int
    slots: int
    slot_bytes: int
    kind: str
    shift: int = 0
    align: int = 0
    ring: bool = False

    @property
    def nbytes(self) -> int:
        return self.slots * self.slot_bytes


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

    def moved_sections(self) -> list[MovedSection]:
        """The region cut into the parts LOAD and STORE move (:class:`MovedSection`), in region order."""
        sections, w, out = self.sections(), self.width, []
        if self.mode is not KvMode.KV4_CHANNEL:
            rows = {"codes": self.code_row_bytes, "stats": 8 * self.kv_heads}
            for name, (offset, size) in sections.items():
                if not size:
                    continue
                if self.sinks:
                    out.append(MovedSection(f"{name}.sinks", RingPart.SINKS, offset, self.sinks, rows[name], "tokens"))
                out.append(MovedSection(f"{name}.window", RingPart.WINDOW, offset + self.sinks * rows[name],
                                        self.window + self.chunk, rows[name], "tokens", ring=True))
            return out
        stores = [("window", RingPart.WINDOW, self.window_block, self.window_slots, self.raw_ring, True)]
        if self.sinks:
            stores.insert(0, ("sink", RingPart.SINKS, self.sink_block, self.sink_slots, self.sinks, False))
        for prefix, part, block, slots, raw_rows, ring in stores:
            shift = _log2(block)
            for name, slot_bytes in (("codes", block * self.code_row_bytes), ("stats", 8 * w)):
                offset = sections[f"{prefix}_{name}"][0]
                if shift is None:
                    out.append(MovedSection(f"{prefix}_{name}", part, offset, slots, slot_bytes, "whole"))
                else:
                    out.append(MovedSection(f"{prefix}_{name}", part, offset, slots, slot_bytes, "blocks",
                                            shift=shift, ring=ring))
            # raw staging: without a power-of-two block, load every raw sink (sinks) or the last W - 1
            # tokens (window, whose block is then W long): both cover the unfinished block
            out.append(MovedSection(f"{prefix}_raw", part, sections[f"{prefix}_raw"][0], raw_rows, 4 * w,
                                    "raw" if shift is not None else "tokens", align=shift or 0, ring=ring))
        return out
