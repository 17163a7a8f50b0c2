"""The integer model's Λ cache and Λ attention (docs/numerics.md §13).

Per layer, keys and values are stored *unrotated* in S sink slots plus a W-slot ring, as KV4 or
KV8 codes (or ACT32), with the slot arithmetic of :mod:`llmfab.sim.kv_ring`:

- per-token and ACT32 streams: one array of S + W token slots (:func:`~llmfab.sim.kv_ring.token_slot`),
  a token quantized as it is stored;
- per-channel streams: the sinks and the window ring each as blocks of B tokens in block
  slots (:class:`~llmfab.sim.kv_ring.BlockLayout`); a block is quantized when its last token is
  stored, the unfinished block waits in ACT32 staging, whole blocks are evicted.

**Reading rule.** Query i sees every key as stored right after token i was stored: a token
whose block completes at stream index e (``ready_at``) is read in ACT32 by queries before e and
dequantized from then on. The rule is causal, so a prompt processed in chunks of any size gives
the same integers as decode steps.

Attention rotates the keys by their slot positions and the query at its own slot (RoPE tables of
positions ``0 .. S+W-1``) and runs :func:`~llmfab.sim.attention_ops.attention` on the keys each
query sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llmfab.sim import kv_ring
from llmfab.sim.attention_ops import AttentionConstants, Kv4Codes, attention, kv4_dequantize, kv4_quantize
from llmfab.sim.kv_ring import BlockLayout, LambdaShape
from llmfab.sim.vector_ops import apply_rope

if TYPE_CHECKING:
    from llmfab.sim.integer_model import KvStoreFormat

ACT32_BYTES = 4  # one ACT32 value, scale or offset
QUERIES_PER_CALL = 16  # full-ring queries attended per call (bounds the gathered keys' memory)


@dataclass(frozen=True, eq=False)
class Timeline:
    """Tokens of one stream as the queries of a chunk read them.

    index: int ``[m]`` ascending stream indices; raw, stored: ACT32 ``[KV, m, D]`` before and after
    quantization (equal for tokens quantized as they arrive); ready_at: int ``[m]``, query i reads
    ``stored`` where ``ready_at <= i`` and ``raw`` otherwise.
    """

    index: np.ndarray
    raw: np.ndarray
    stored: np.ndarray
    ready_at: np.ndarray

    @staticmethod
    def join(parts: "list[Timeline]") -> "Timeline":
        """Timelines of disjoint, ordered index ranges as one."""
        return Timeline(*(np.concatenate([getattr(p, name) for p in parts], axis=axis)
                          for name, axis in (("index", 0), ("raw", 1), ("stored", 1), ("ready_at", 0))))

    def take(self, keys: np.ndarray) -> "Timeline":
        """The tokens with stream indices ``keys`` (all must be held)."""
        at = np.searchsorted(self.index, keys)
        if at.size and (at.max() >= self.index.size or not np.array_equal(self.index[at], keys)):
            raise AssertionError(f"Λ cache does not hold stream tokens {keys.tolist()}")  # a bug, not bad input
        return Timeline(keys, self.raw[:, at], self.stored[:, at], self.ready_at[at])


def code_bytes(values: int, bits: int) -> int:
    """Bytes of ``values`` packed ``bits``-bit codes."""
    return values * bits // 8


class TokenSlots:
    """Per-token ``bits``-bit codes (None: ACT32 values) of one stream in S + W token slots."""

    def __init__(self, shape: LambdaShape, bits: int | None):
        self.shape, self.bits = shape, bits
        self.appended = 0
        self.codes: Kv4Codes | None = None  # [KV, S+W, D] codes, [KV, S+W, 1] scale and offset
        self.values: np.ndarray | None = None  # [KV, S+W, D] ACT32 as read

    def extend(self, x: np.ndarray) -> Timeline:
        """Store tokens ``x`` [KV, n, D] (stream indices ``appended ..``); return the held and new tokens."""
        start, n = self.appended, x.shape[1]
        held = self._held(start)
        codes = None if self.bits is None else kv4_quantize(x, axis=-1, bits=self.bits)
        stored = x if codes is None else kv4_dequantize(codes)
        old = self.values[:, kv_ring.token_slot(self.shape, held)] if held.size else stored[:, :0]
        index = np.concatenate([held, np.arange(start, start + n)])
        values = np.concatenate([old, stored], axis=1)
        self.appended += n
        kept = self._held(self.appended)
        self._write(kept[kept >= start], stored, codes, start)
        return Timeline(index, values, values, index)

    def _held(self, end: int) -> np.ndarray:
        """Stream indices held once ``end`` tokens were stored: the sinks and the last W others."""
        sinks = np.arange(min(end, self.shape.sinks))
        return np.concatenate([sinks, np.arange(max(self.shape.sinks, end - self.shape.window), end)])

    def _write(self, index: np.ndarray, stored: np.ndarray, codes: Kv4Codes | None, start: int) -> None:
        """Write the new tokens ``index`` (of ``stored``, which starts at ``start``) to their slots."""
        if self.values is None:
            self.values = np.zeros((stored.shape[0], self.shape.slots, stored.shape[2]), dtype=np.int64)
            if codes is not None:
                self.codes = Kv4Codes(np.zeros_like(self.values), *(np.zeros_like(self.values[..., :1]),) * 2)
        slots, new = kv_ring.token_slot(self.shape, index), index - start
        self.values[:, slots] = stored[:, new]
        if codes is not None:
            for name in ("codes", "scale", "offset"):
                getattr(self.codes, name)[:, slots] = getattr(codes, name)[:, new]

    def nbytes(self) -> int:
        """Bytes of the occupied slots: codes plus ACT32 scale and offset per (head, token), or ACT32."""
        if self.values is None:
            return 0
        kv, _, d = self.values.shape
        per_token = d * ACT32_BYTES if self.bits is None else code_bytes(d, self.bits) + 2 * ACT32_BYTES
        return kv * self._held(self.appended).size * per_token


class BlockSlots:
    """One per-channel store of ``bits``-bit codes (the sinks or the window ring): blocks of B
    tokens in ``layout.block_slots`` block slots and an ACT32 staging buffer for the unfinished block."""

    def __init__(self, layout: BlockLayout, bits: int):
        self.layout, self.bits = layout, bits
        self.appended = 0  # tokens of this store so far
        self.codes: Kv4Codes | None = None  # [slots, KV, B, D] codes, [slots, KV, 1, D] scale and offset
        self.blocks: np.ndarray | None = None  # [slots, KV, B, D] ACT32 as read
        self.staged: np.ndarray | None = None  # [KV, < B, D] ACT32

    def extend(self, x: np.ndarray) -> Timeline:
        """Store tokens ``x`` [KV, n, D] (the store's next tokens); return the held and new tokens."""
        b = self.layout.block_tokens
        first, stop = self.layout.held_blocks(self.appended)
        staged = x[:, :0] if self.staged is None else self.staged
        held = self._read_blocks(first, stop, like=x)
        waiting = np.concatenate([staged, x], axis=1)
        full = waiting.shape[1] // b * b
        new_codes = [kv4_quantize(waiting[:, s : s + b], axis=1, bits=self.bits) for s in range(0, full, b)]
        quantized = [kv4_dequantize(c) for c in new_codes]
        raw = np.concatenate([held, waiting], axis=1)
        stored = np.concatenate([held, *quantized, waiting[:, full:]], axis=1)
        origin = self.layout.first + first * b
        index = np.arange(origin, origin + raw.shape[1])
        for number, (codes, values) in enumerate(zip(new_codes, quantized), start=stop):
            self._write_block(number, codes, values)
        self.staged = waiting[:, full:]
        self.appended += x.shape[1]
        return Timeline(index, raw, stored, self.layout.ready_at(index))

    def _read_blocks(self, first: int, stop: int, like: np.ndarray) -> np.ndarray:
        """ACT32 ``[KV, (stop-first)*B, D]`` of blocks ``first .. stop-1``, oldest first."""
        if stop == first:
            return like[:, :0]
        held = self.blocks[self.layout.block_slot(np.arange(first, stop))]  # [n, KV, B, D]
        return held.transpose(1, 0, 2, 3).reshape(held.shape[1], -1, held.shape[3])

    def _write_block(self, number: int, codes: Kv4Codes, values: np.ndarray) -> None:
        if self.blocks is None:
            slots = self.layout.block_slots
            self.blocks = np.zeros((slots, *values.shape), dtype=np.int64)
            self.codes = Kv4Codes(np.zeros_like(self.blocks), *(np.zeros_like(self.blocks[:, :, :1]),) * 2)
        slot = int(self.layout.block_slot(number))
        self.blocks[slot] = values
        for name in ("codes", "scale", "offset"):
            getattr(self.codes, name)[slot] = getattr(codes, name)

    def nbytes(self) -> int:
        """Bytes held: per block codes plus ACT32 scale and offset per (head, channel); staging ACT32."""
        total = 0
        if self.blocks is not None:
            first, stop = self.layout.held_blocks(self.appended)
            _, kv, b, d = self.blocks.shape
            total += (stop - first) * kv * (code_bytes(b * d, self.bits) + 2 * d * ACT32_BYTES)
        if self.staged is not None:
            total += self.staged.size * ACT32_BYTES
        return total


class LambdaStream:
    """One layer's keys or values: sinks plus window ring in the given format.

    Per-channel streams keep two block stores, ``sinks`` (None when S = 0) and ``window``; other
    streams keep sinks and ring in one :class:`TokenSlots` (``window``, ``sinks`` None).
    """

    def __init__(self, shape: LambdaShape, fmt: "KvStoreFormat | None"):
        """``fmt`` None stores ACT32; otherwise codes per token or in per-channel blocks."""
        self.shape = shape
        self.appended = 0
        self.blocked = fmt is not None and fmt.per_channel
        self.sinks: BlockSlots | None = None
        if self.blocked:
            self.window = BlockSlots(BlockLayout.window(shape, fmt.block_tokens), fmt.bits)
            if shape.sinks:
                self.sinks = BlockSlots(BlockLayout.sinks(shape, fmt.block_tokens), fmt.bits)
        else:
            self.window = TokenSlots(shape, None if fmt is None else fmt.bits)

    def extend(self, x: np.ndarray) -> Timeline:
        """Store the next tokens ``x`` [KV, n, D]; return what the chunk's queries can read."""
        start = self.appended
        self.appended += x.shape[1]
        if not self.blocked:
            return self.window.extend(x)
        to_sinks = max(0, min(self.shape.sinks - start, x.shape[1]))
        window = self.window.extend(x[:, to_sinks:])
        return window if self.sinks is None else Timeline.join([self.sinks.extend(x[:, :to_sinks]), window])

    def nbytes(self) -> int:
        """Bytes this stream holds."""
        return self.window.nbytes() + (0 if self.sinks is None else self.sinks.nbytes())


def lambda_attention(q, keys: Timeline, values: Timeline, start: int, shape: LambdaShape,
                     cos, sin, constants: AttentionConstants) -> np.ndarray:
    """Λ attention of the queries ``start .. start+n-1``.

    Args:
        q: unrotated ACT32 queries ``[H, n, D]``.
        keys, values: unrotated stored keys and values, holding every key the queries see.
        cos, sin: TRIG18 RoPE tables of the slot positions ``0 .. S+W-1`` (``[S+W, D/2]``).
        constants: ``log2(e)/sqrt(D)``.

    Returns:
        ACT32 ``[H, n, D]``. Queries before the ring fills attend in one call, keys at their stream
        index in both forms (raw and stored) with a visibility that picks each query's form; queries
        with a full ring attend to the S + W keys of their slots, in groups.
    """
    n = q.shape[1]
    queries = np.arange(start, start + n)
    visible_keys = kv_ring.chunk_keys(shape, start, n)
    keys, values = keys.take(visible_keys), values.take(visible_keys)
    full = kv_ring.ring_full(shape, queries)
    parts = []
    if not full.all():
        parts.append(_filling_attention(q[:, ~full], queries[~full], keys, values, shape, cos, sin, constants))
    full_queries = queries[full]
    for at in range(0, full_queries.size, QUERIES_PER_CALL):
        group = full_queries[at : at + QUERIES_PER_CALL]
        parts.append(_full_ring_attention(q[:, group - start], group, keys, values, shape, cos, sin, constants))
    return np.concatenate(parts, axis=1)


def _forms(timeline: Timeline, queries: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ACT32 ``[KV, m, D]``, bool ``[n, m]`` where the queries read it) for the stored form, and
    for the raw form if some token is still raw for some query. When every query reads each token
    in the same form (always for one query), that is one array holding each token's form, read by all."""
    ready = kv_ring.reads_stored(queries, timeline.ready_at)
    if ready.all():
        return [(timeline.stored, ready)]
    first = ready[0]
    if (ready == first).all():  # masked-out columns add nothing to attention: one form per token is the same
        return [(np.where(first[None, :, None], timeline.stored, timeline.raw), np.ones_like(ready))]
    return [(timeline.stored, ready), (timeline.raw, ~ready)]


def _filling_attention(q, queries, keys: Timeline, values: Timeline, shape, cos, sin, constants) -> np.ndarray:
    """Queries with ``i < S + W - 1``: every key at its stream index, the query at ``i``."""
    seen = keys.index[keys.index <= queries[-1]]  # keys of later, full-ring queries are not at their index
    keys, values = keys.take(seen), values.take(seen)
    visible = kv_ring.visibility(shape, queries, seen)
    positions = seen  # == kv_ring.key_positions before the ring fills
    at = kv_ring.query_positions(shape, queries)
    rotated_q = apply_rope(q, cos[at], sin[at])
    columns, mixed_values, masks = [], [], []
    for key_form, key_reads in _forms(keys, queries):
        rotated = apply_rope(key_form, cos[positions], sin[positions])
        for value_form, value_reads in _forms(values, queries):
            columns.append(rotated)
            mixed_values.append(value_form)
            masks.append(visible & key_reads & value_reads)
    return attention(rotated_q, np.concatenate(columns, axis=1), np.concatenate(mixed_values, axis=1),
                     constants, np.concatenate(masks, axis=1))


def _full_ring_attention(q, queries, keys: Timeline, values: Timeline, shape, cos, sin, constants) -> np.ndarray:
    """Queries with a full ring: S + W keys each, in slot order, rotated to positions ``0 .. S+W-1``,
    the query at ``S + W - 1``; the query index is folded into the head axis."""
    heads, n, d = q.shape
    at = np.searchsorted(keys.index, kv_ring.slot_keys(shape, queries))  # [n, S+W]
    gathered = []
    for timeline in (keys, values):
        reads = kv_ring.reads_stored(queries, timeline.ready_at[at])[None, :, :, None]
        chosen = np.where(reads, timeline.stored[:, at], timeline.raw[:, at])  # [KV, n, S+W, D]
        gathered.append(chosen.transpose(1, 0, 2, 3).reshape(-1, shape.slots, d))
    rotated_keys = apply_rope(gathered[0], cos, sin)
    slot = kv_ring.query_positions(shape, queries)  # S + W - 1 for every full-ring query
    rotated_q = apply_rope(q, cos[slot], sin[slot])
    flat_q = rotated_q.transpose(1, 0, 2).reshape(n * heads, 1, d)
    mixed = attention(flat_q, rotated_keys, gathered[1], constants, np.ones((1, shape.slots), dtype=bool))
    return mixed.reshape(n, heads, d).transpose(1, 0, 2)
