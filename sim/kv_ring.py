"""Slot and position arithmetic of the Λ-shaped KV cache (docs/numerics.md §13).

Λ attention with S attention sinks and a window of W: stream token i (0-based) attends to the
sinks ``0 .. min(i, S-1)`` and the window tokens ``window_start(i) .. i`` with
``window_start(i) = max(S, i - W + 1)``. Positions follow StreamingLLM: keys are cached *before*
RoPE and rotated by their slot in the cache as query i sees it — sinks at ``0 .. S-1``, window
tokens contiguous after them (``S + j - window_start(i)``) — and the query sits at its own slot
``min(i, S + W - 1)``. No position ever reaches S + W.

The cache memory is S sink slots plus a ring of W token slots (:func:`token_slot`). A stream
stored per channel is cut into blocks of B tokens that share statistics; :class:`BlockLayout`
numbers the blocks of one store (the sinks, or the window ring), says when each token's block
is complete (:meth:`BlockLayout.ready_at`; :func:`reads_stored` is the reading rule built on it),
which blocks are still held after a number of tokens (eviction of whole blocks,
:meth:`BlockLayout.held_blocks`) and which block slot holds a block.

Every function is integer numpy arithmetic, vectorized over stream indices; the integer model
(sim/integer_model.py) and the instruction emulator share them, so both address and rotate the
cache the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.errors import InputError

NEVER = np.iinfo(np.int64).max  # ready_at of a token whose block never completes


@dataclass(frozen=True)
class LambdaShape:
    """S attention sinks (>= 0) and a window of W tokens (>= 1)."""

    sinks: int
    window: int

    def __post_init__(self) -> None:
        """Reject a negative sink count or a window below one token."""
        for name, value, least in (("attention sinks", self.sinks, 0), ("attention window", self.window, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise InputError(f"{name} {value!r} must be a whole number >= {least} (e.g. sinks 4, window 1024)")

    @property
    def slots(self) -> int:
        """Cache slots, S + W: the number of keys a query sees once the ring is full."""
        return self.sinks + self.window


def _ints(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def window_start(shape: LambdaShape, queries) -> np.ndarray:
    """First window token each query sees: ``max(S, i - W + 1)`` (> i for a query that is a sink)."""
    return np.maximum(shape.sinks, _ints(queries) - shape.window + 1)


def query_positions(shape: LambdaShape, queries) -> np.ndarray:
    """RoPE position of each query: its slot ``min(i, S + W - 1)``."""
    return np.minimum(_ints(queries), shape.slots - 1)


def visibility(shape: LambdaShape, queries, keys) -> np.ndarray:
    """bool ``[n, m]``: query ``queries[a]`` attends to key ``keys[b]`` (both stream indices)."""
    i, j = _ints(queries)[:, None], _ints(keys)[None, :]
    return (j <= i) & ((j < shape.sinks) | (j >= window_start(shape, i)))


def key_positions(shape: LambdaShape, queries, keys) -> np.ndarray:
    """int ``[n, m]``: RoPE position of key ``keys[b]`` as query ``queries[a]`` sees it — ``j`` for
    a sink, ``S + j - window_start(i)`` for a window token. Meaningful where :func:`visibility` holds."""
    i, j = _ints(queries)[:, None], _ints(keys)[None, :]
    return np.where(j < shape.sinks, j, shape.sinks + j - window_start(shape, i))


def chunk_keys(shape: LambdaShape, start: int, count: int) -> np.ndarray:
    """Stream indices, ascending, of every key some query of ``start .. start+count-1`` sees:
    the sinks stored by then and the window from ``window_start(start)`` to the last query."""
    end = start + count
    sinks = np.arange(min(shape.sinks, end), dtype=np.int64)
    return np.concatenate([sinks, np.arange(int(window_start(shape, start)), end, dtype=np.int64)])


def ring_full(shape: LambdaShape, queries) -> np.ndarray:
    """bool: the query sees exactly S + W keys, in slot order at positions ``0 .. S+W-1``
    (``i >= S + W - 1``). Before that, every key sits at its stream index and the query at ``i``."""
    return _ints(queries) >= shape.slots - 1


def slot_keys(shape: LambdaShape, queries) -> np.ndarray:
    """int ``[n, S + W]``: for queries with :func:`ring_full`, the stream index of the key in each
    slot (sinks ``0 .. S-1``, then ``i - W + 1 .. i``); slot s is rotated to position s."""
    i = _ints(queries)[:, None]
    sinks = np.broadcast_to(np.arange(shape.sinks, dtype=np.int64), (i.shape[0], shape.sinks))
    return np.concatenate([sinks, i - shape.window + 1 + np.arange(shape.window, dtype=np.int64)], axis=1)


def reads_stored(queries, ready_at) -> np.ndarray:
    """bool ``[n, m]``: query ``queries[a]`` reads token b in its stored (quantized) form, i.e. the
    token was ready when the query's own token was stored (``ready_at <= i``); otherwise the
    token is still waiting unquantized. ``ready_at`` ``[m]`` (or ``[n, m]``, per query) is the
    token's stream index for per-token streams and :meth:`BlockLayout.ready_at` for per-channel
    ones. This causal rule makes every prefill chunking give the decode steps' integers."""
    return _ints(ready_at) <= _ints(queries)[:, None]


def token_slot(shape: LambdaShape, stream_index) -> np.ndarray:
    """Physical slot of a stream token in a token-granular cache of S sink slots plus a W-slot
    ring: ``j`` for a sink, ``S + (j - S) mod W`` otherwise (a slot is reused W tokens later)."""
    j = _ints(stream_index)
    return np.where(j < shape.sinks, j, shape.sinks + (j - shape.sinks) % shape.window)


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of one per-channel store: its tokens ``first, first+1, ...`` are cut into blocks of
    ``block_tokens``; a block is quantized once its last token is stored, the unfinished block
    waits unquantized, and a block is dropped whole once the tokens after it still cover
    ``capacity`` (as quant/kv_cache_4bit.py's Kv4BlockRing does).

    first: stream index of the store's first token (0 for the sinks, S for the window ring).
    capacity: tokens that must stay readable (S, or W).
    block_tokens: B, at most ``capacity``.
    limit: tokens the store ever receives (S for the sinks), None for an unbounded stream.
    """

    first: int
    capacity: int
    block_tokens: int
    limit: int | None = None

    def __post_init__(self) -> None:
        """Reject a block longer than the capacity or not positive."""
        if not 1 <= self.block_tokens <= self.capacity:
            raise InputError(
                f"KV block of {self.block_tokens} tokens must be between 1 and the store capacity {self.capacity}"
            )

    @classmethod
    def sinks(cls, shape: LambdaShape, block_tokens: int) -> "BlockLayout":
        """The sink store: S tokens from stream index 0, blocks of ``min(B, S)`` (S >= 1)."""
        return cls(0, shape.sinks, min(block_tokens, shape.sinks), limit=shape.sinks)

    @classmethod
    def window(cls, shape: LambdaShape, block_tokens: int) -> "BlockLayout":
        """The window ring: tokens from stream index S on, blocks of ``min(B, W)``."""
        return cls(shape.sinks, shape.window, min(block_tokens, shape.window))

    @property
    def block_slots(self) -> int:
        """Block slots the store needs: ``ceil(capacity / B)`` (never more blocks are held)."""
        return -(-self.capacity // self.block_tokens)

    def block_of(self, stream_index) -> np.ndarray:
        """Block number of each stream token (0 for the store's first block)."""
        return (_ints(stream_index) - self.first) // self.block_tokens

    def block_end(self, block) -> np.ndarray:
        """Stream index of the last token of each block."""
        return self.first + (_ints(block) + 1) * self.block_tokens - 1

    def ready_at(self, stream_index) -> np.ndarray:
        """Stream index from which each token is read quantized: its block's last token (the
        block is quantized as that token is stored); :data:`NEVER` if the store never gets it."""
        end = self.block_end(self.block_of(stream_index))
        if self.limit is None:
            return end
        return np.where(end < self.first + self.limit, end, NEVER)

    def held_blocks(self, appended: int) -> tuple[int, int]:
        """``(first, stop)`` block numbers held after ``appended`` tokens were stored: the completed
        blocks minus those dropped because the blocks after them and the staged tokens still hold
        ``capacity`` tokens (``(stop - first - 1) * B + staged < capacity``)."""
        complete, staged = divmod(appended, self.block_tokens)
        kept = min(complete, (self.capacity - staged - 1) // self.block_tokens + 1)
        return complete - kept, complete

    def block_slot(self, block) -> np.ndarray:
        """Slot of each block in a ring of :attr:`block_slots` block slots."""
        return _ints(block) % self.block_slots
