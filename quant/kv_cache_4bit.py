"""Decoding caches that keep keys/values as packed 4- or 8-bit codes (storage from
:mod:`llmfab.quant.kv4`; the code width is ``Kv4Config.bits``).

Two consumers:

- :class:`Kv4KVCache`: the dense cache (`append(k, v) -> (all_k, all_v)`, post-RoPE keys), each of K
  and V in a :class:`~llmfab.quant.kv4.Kv4Cache`; attention reads the dequantized values.
- the Λ cache of :mod:`llmfab.quant.lambda_attention`, whose sink slots and W-slot window are
  "token stores" made by :func:`make_store`: float (:class:`FloatRing`), packed per-token
  (:class:`Kv4TokenRing`) or packed per-channel blocks (:class:`Kv4BlockRing`).

Every token store holds one stream ``[batch, kv_heads, tokens, head_dim]`` and keeps its last
``capacity`` tokens; ``append(x)`` returns the values *as stored* (dequantized) so attention over a
prefill chunk sees exactly what a later read would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.kv4 import Kv4Block, Kv4Cache, Kv4Config, KvGranularity, dequantize_kv4, quantize_kv4


@dataclass(frozen=True)
class Kv4CacheConfig:
    """Layout of the packed keys and of the packed values (granularity and bits of each).

    The default, 4-bit per-channel keys (blocks of 32 tokens) and per-token values, was chosen by
    measurement on SmolLM2-135M (persuasion, ctx 512: perplexity x1.019 of float, against x1.128
    for per-token keys); see docs/lambda_attention.md. With 8 bits the pairs differ by at most
    0.4 % and this one is kept (docs/compression_measurements.md, "KV8").
    """

    keys: Kv4Config = Kv4Config(KvGranularity.PER_CHANNEL, block_tokens=32)
    values: Kv4Config = Kv4Config(KvGranularity.PER_TOKEN)

    @classmethod
    def named(cls, keys: str, values: str, block_tokens: int = 32, bits: int = 4) -> "Kv4CacheConfig":
        """From granularity names 'per_token' / 'per_channel' (InputError otherwise) and the code
        width of both streams (4 or 8)."""
        return cls(_kv_config(keys, block_tokens, bits, "keys"), _kv_config(values, block_tokens, bits, "values"))


def _kv_config(name: str, block_tokens: int, bits: int, what: str) -> Kv4Config:
    choices = [g.value for g in KvGranularity]
    if name not in choices:
        raise InputError(f"KV granularity for {what} {name!r} is unknown; choose one of {', '.join(choices)}")
    return Kv4Config(KvGranularity(name), block_tokens, bits)


def kv_bytes_per_token(config: ModelConfig, kv4: Kv4CacheConfig | None = None, float_bytes: int = 2) -> float:
    """Cache bytes one token of one sequence costs over all layers, K and V together.

    Float caches cost ``float_bytes`` per value (2 = float16, as a deployment would store them);
    packed caches cost head_dim * bits / 8 code bytes plus float16 scale/offset per (head, token)
    or, per-channel, 2*2*head_dim bytes per head amortized over ``block_tokens``.
    """
    if kv4 is None:
        return config.num_layers * 2 * config.kv_dim * float_bytes
    per_layer = sum(
        Kv4Cache(1, config.num_kv_heads, config.head_dim, c).bytes_per_token() for c in (kv4.keys, kv4.values)
    )
    return config.num_layers * per_layer


class Kv4KVCache:
    """Dense (every token kept) KV cache of one layer in packed 4- or 8-bit storage.

    ``append(k, v)`` with k, v ``[B, kv_heads, T, head_dim]`` returns all keys/values so far,
    dequantized, ``[B, kv_heads, tokens, head_dim]`` in the input dtype. Per-channel tokens wait in a
    float16 buffer until their block of ``block_tokens`` fills (see kv4.py).
    """

    def __init__(self, config: Kv4CacheConfig = Kv4CacheConfig()):
        self.config = config
        self.keys: Kv4Cache | None = None
        self.values: Kv4Cache | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            b, kv, _, d = keys.shape
            self.keys = Kv4Cache(b, kv, d, self.config.keys)
            self.values = Kv4Cache(b, kv, d, self.config.values)
        self.keys.append(keys)
        self.values.append(values)
        return self.keys.read().to(keys.dtype), self.values.read().to(values.dtype)

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.num_tokens

    def nbytes(self) -> int:
        """Bytes actually held: packed codes, float16 scales/offsets, float16 staging buffers."""
        if self.keys is None:
            return 0
        return self.keys.stored_bytes() + self.values.stored_bytes()


class FloatRing:
    """The last ``capacity`` tokens of a stream in a preallocated ring of slots (input dtype)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.total = 0  # tokens ever appended
        self._slots: tuple[torch.Tensor, ...] | None = None

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,)

    def _decode(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return parts[0]

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """Store x ``[B, kv, T, D]`` (oldest slots overwritten); return x as stored, same shape."""
        parts = self._encode(x)
        n = x.shape[2]
        if self._slots is None:
            self._slots = tuple(p.new_zeros(*p.shape[:2], self.capacity, p.shape[3]) for p in parts)
        keep = min(n, self.capacity)
        slot = (self.total + n - keep + torch.arange(keep)) % self.capacity
        for ring, p in zip(self._slots, parts):
            ring.index_copy_(2, slot, p[:, :, n - keep :])
        self.total += n
        return self._decode(parts)

    def read(self) -> torch.Tensor:
        """Stored tokens, oldest first: ``[B, kv, min(total, capacity), D]``."""
        if self._slots is None:
            return torch.zeros(0)
        if self.total <= self.capacity:
            return self._decode(tuple(r[:, :, : self.total].clone() for r in self._slots))  # no view: slots get overwritten
        start = self.total % self.capacity
        return self._decode(tuple(torch.cat([r[:, :, start:], r[:, :, :start]], dim=2) for r in self._slots))

    def nbytes(self) -> int:
        if self._slots is None:
            return 0
        return sum(r.numel() * r.element_size() for r in self._slots)


class Kv4TokenRing(FloatRing):
    """Ring of packed ``bits``-bit codes with one float16 (scale, offset) per token and head."""

    def __init__(self, capacity: int, bits: int = 4):
        super().__init__(capacity)
        self.bits = bits

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        block = quantize_kv4(x, KvGranularity.PER_TOKEN, self.bits)
        return block.codes, block.scales, block.offsets

    def _decode(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return dequantize_kv4(Kv4Block(*parts, bits=self.bits))


class Kv4BlockRing:
    """Packed ``bits``-bit per-channel storage of the last ``capacity`` tokens: blocks of
    ``block_tokens`` tokens share one float16 (scale, offset) per channel; the unfinished block
    waits in float16.

    A block is dropped once all its tokens are older than the last ``capacity``, so up to
    ``capacity + 2 * block_tokens - 2`` tokens are held (constant); reads return only the last
    ``capacity``.
    """

    def __init__(self, capacity: int, block_tokens: int, bits: int = 4):
        self.capacity, self.block_tokens, self.bits = capacity, block_tokens, bits
        self.total = 0
        self._blocks: deque[Kv4Block] = deque()
        self._held_in_blocks = 0
        self._pending: torch.Tensor | None = None

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """Store x ``[B, kv, T, D]``; return x as stored (quantized if its block filled, else float16)."""
        pending = x.new_zeros(*x.shape[:2], 0, x.shape[3]).half() if self._pending is None else self._pending
        staged = torch.cat([pending, x.half()], dim=2)
        full = staged.shape[2] // self.block_tokens * self.block_tokens
        new_blocks = [quantize_kv4(staged[:, :, s : s + self.block_tokens], KvGranularity.PER_CHANNEL, self.bits)
                      for s in range(0, full, self.block_tokens)]
        self._pending = staged[:, :, full:].clone()
        self._blocks.extend(new_blocks)
        self._held_in_blocks += full
        self.total += x.shape[2]
        while self._blocks and self._held_in_blocks - self.block_tokens + self._pending.shape[2] >= self.capacity:
            self._blocks.popleft()
            self._held_in_blocks -= self.block_tokens
        stored = torch.cat([dequantize_kv4(b) for b in new_blocks] + [self._pending.float()], dim=2)
        return stored[:, :, pending.shape[2] :].to(x.dtype)

    def read(self) -> torch.Tensor:
        """Last min(total, capacity) tokens, oldest first, ``[B, kv, n, D]`` float32."""
        if self._pending is None:
            return torch.zeros(0)
        held = torch.cat([dequantize_kv4(b) for b in self._blocks] + [self._pending.float()], dim=2)
        return held[:, :, -min(self.total, self.capacity) :]

    def nbytes(self) -> int:
        if self._pending is None:
            return 0
        return sum(b.nbytes for b in self._blocks) + self._pending.numel() * self._pending.element_size()


def make_store(capacity: int, kv4: Kv4Config | None):
    """Token store keeping the last ``capacity`` tokens: float if kv4 is None, else packed
    (``kv4.bits`` bits per value)."""
    if kv4 is None:
        return FloatRing(capacity)
    if kv4.granularity is KvGranularity.PER_TOKEN:
        return Kv4TokenRing(capacity, kv4.bits)
    return Kv4BlockRing(capacity, min(kv4.block_tokens, capacity), kv4.bits)
