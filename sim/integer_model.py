"""Integer reference forward of a compressed LLaMA model, built only from the ops of
:mod:`llmfab.sim.numerics` (docs/numerics.md §11).

One sequence at a time: :meth:`IntegerModel.forward` runs T tokens (prefill, or a decode step
when T = 1) through embedding -> decoder layers -> final norm -> LM head and returns ACT32 logits,
advancing the model's cache whose keys and values are stored as KV4 or KV8 codes (or as ACT32
when the model was built without a quantized cache). Attention is dense (:class:`IntegerCache`, keys stored after RoPE)
or Λ-shaped (:class:`LambdaCache`: S sinks + W-slot ring, keys stored before RoPE and rotated by
slot, see :mod:`llmfab.sim.lambda_cache`). numpy only; see :mod:`llmfab.sim.integer_weights` for
building a model from the fake-quant torch model or an artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.sim.attention_ops import (
    AttentionConstants,
    attention,
    causal_visibility,
    kv4_dequantize,
    kv4_quantize,
)
from llmfab.sim.kv_ring import LambdaShape
from llmfab.sim.lambda_cache import LambdaStream, lambda_attention
from llmfab.sim.linear_ops import IntegerWeight, embed, linear, requantize_per_token
from llmfab.sim.special_functions import silu
from llmfab.sim.vector_ops import NormWeight, apply_rope, multiply, residual_add, rmsnorm, rope_tables


@dataclass(frozen=True)
class KvStoreFormat:
    """How one cache stream (keys or values) is stored (§6.4).

    per_channel: statistics per (head, channel) over blocks of ``block_tokens`` tokens, the
    unfinished block waiting unquantized (ACT32); otherwise per (head, token) over head_dim.
    bits: code width, 4 (KV4) or 8 (KV8).
    """

    per_channel: bool
    block_tokens: int = 32
    bits: int = 4


@dataclass(frozen=True, eq=False)
class IntegerLayer:
    """One decoder layer's integer weights and norm constants."""

    input_norm: NormWeight
    q_proj: IntegerWeight
    k_proj: IntegerWeight
    v_proj: IntegerWeight
    o_proj: IntegerWeight
    post_attention_norm: NormWeight
    gate_proj: IntegerWeight
    up_proj: IntegerWeight
    down_proj: IntegerWeight


@dataclass(frozen=True, eq=False)
class IntegerModel:
    """A compressed model in the engine's integer formats.

    keys / values: KV4/KV8 formats of the cache streams, None to keep them as ACT32.
    inv_freq: float64 ``[head_dim/2]`` RoPE frequencies (the compiler turns them into tables).
    lambda_shape: S sinks and a W window for Λ-shaped attention, None for dense attention.
    head_act_bits: width of the LM head's input codes, 8 or 16 (A16, docs/numerics.md §3.1); every
    other linear takes int8 codes.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    embedding: IntegerWeight
    layers: tuple[IntegerLayer, ...]
    final_norm: NormWeight
    lm_head: IntegerWeight
    inv_freq: np.ndarray
    keys: KvStoreFormat | None
    values: KvStoreFormat | None
    lambda_shape: LambdaShape | None = None
    head_act_bits: int = 8

    def new_cache(self) -> "IntegerCache | LambdaCache":
        """An empty cache for one sequence (dense, or Λ when the model has a Λ shape)."""
        if self.lambda_shape is not None:
            return LambdaCache(len(self.layers), self.lambda_shape, self.keys, self.values)
        return IntegerCache(len(self.layers), self.keys, self.values)

    def forward(self, ids, cache: "IntegerCache | LambdaCache | None" = None) -> np.ndarray:
        """Token ids ``[T]`` -> ACT32 logits ``[T, vocab]``; appends to ``cache`` (a new one if None).

        Under Λ attention the tokens may come in chunks of any size (a prompt at once, in pieces, or
        one token per call): the logits are the same integers.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        cache = self.new_cache() if cache is None else cache
        constants = AttentionConstants.for_head_dim(self.head_dim)
        if self.lambda_shape is None:
            positions = np.arange(cache.position, cache.position + ids.shape[0])
            cos, sin = rope_tables(self.inv_freq, positions)
            attends = [dense_attend(streams, cos, sin, constants) for streams in cache.layers]
        else:
            cos, sin = rope_tables(self.inv_freq, np.arange(self.lambda_shape.slots))  # slot positions
            attends = [lambda_attend(streams, cache.position, self.lambda_shape, cos, sin, constants)
                       for streams in cache.layers]
        x = embed(ids, self.embedding)
        for layer, attend in zip(self.layers, attends):
            x = decoder_layer(self, layer, x, attend)
        cache.position += ids.shape[0]
        return linear(requantize_per_token(rmsnorm(x, self.final_norm), self.head_act_bits), self.lm_head)


def dense_attend(streams, cos, sin, constants: AttentionConstants):
    """Dense attention of one layer: q, k rotated at their stream positions, k stored rotated,
    causal visibility over every stored key."""
    key_stream, value_stream = streams

    def attend(q, k, v):
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        key_stream.append(k)
        value_stream.append(v)
        keys, values = key_stream.read(), value_stream.read()
        return attention(q, keys, values, constants, causal_visibility(q.shape[1], keys.shape[1]))

    return attend


def lambda_attend(streams, start: int, shape: LambdaShape, cos, sin, constants: AttentionConstants):
    """Λ attention of one layer: k, v stored unrotated in the sinks + ring, then
    :func:`~llmfab.sim.lambda_cache.lambda_attention` with the slot-position tables ``cos, sin``."""
    key_stream, value_stream = streams

    def attend(q, k, v):
        keys, values = key_stream.extend(k), value_stream.extend(v)
        return lambda_attention(q, keys, values, start, shape, cos, sin, constants)

    return attend


def decoder_layer(model: IntegerModel, layer: IntegerLayer, x: np.ndarray, attend) -> np.ndarray:
    """ACT32 hidden states ``[T, hidden]`` -> ``[T, hidden]`` through one decoder layer (§11);
    ``attend(q, k, v)`` maps the unrotated ``[heads, T, head_dim]`` projections to the attention
    output ``[H, T, head_dim]``, updating the layer's cache."""
    t = x.shape[0]
    normed = requantize_per_token(rmsnorm(x, layer.input_norm))
    q = linear(normed, layer.q_proj).reshape(t, model.num_heads, model.head_dim).transpose(1, 0, 2)
    k = linear(normed, layer.k_proj).reshape(t, model.num_kv_heads, model.head_dim).transpose(1, 0, 2)
    v = linear(normed, layer.v_proj).reshape(t, model.num_kv_heads, model.head_dim).transpose(1, 0, 2)
    mixed = attend(q, k, v)
    mixed = mixed.transpose(1, 0, 2).reshape(t, -1)
    x = residual_add(x, linear(requantize_per_token(mixed), layer.o_proj))
    normed = requantize_per_token(rmsnorm(x, layer.post_attention_norm))
    gated = multiply(silu(linear(normed, layer.gate_proj)), linear(normed, layer.up_proj))
    return residual_add(x, linear(requantize_per_token(gated), layer.down_proj))


class KvStream:
    """One layer's keys or values ``[kv_heads, tokens, head_dim]``, stored per :class:`KvStoreFormat`.

    Holds the stored form (codes, scales, offsets; ACT32 for the unfinished per-channel block) and
    its dequantized ACT32 reading.
    """

    def __init__(self, fmt: KvStoreFormat | None):
        self.fmt = fmt
        self.blocks = []  # Kv4Codes of finished tokens
        self._stored: list[np.ndarray] = []  # their ACT32 reading
        self.pending: np.ndarray | None = None  # ACT32 tokens of an unfinished per-channel block

    def append(self, x: np.ndarray) -> None:
        """Store ACT32 tokens ``[kv_heads, T, head_dim]``."""
        if self.fmt is None:
            self._stored.append(x)
            return
        if not self.fmt.per_channel:
            block = kv4_quantize(x, axis=-1, bits=self.fmt.bits)
            self.blocks.append(block)
            self._stored.append(kv4_dequantize(block))
            return
        staged = x if self.pending is None else np.concatenate([self.pending, x], axis=1)
        size = self.fmt.block_tokens
        full = staged.shape[1] // size * size
        for start in range(0, full, size):
            block = kv4_quantize(staged[:, start : start + size], axis=1, bits=self.fmt.bits)
            self.blocks.append(block)
            self._stored.append(kv4_dequantize(block))
        self.pending = staged[:, full:]

    def read(self) -> np.ndarray:
        """All stored tokens as ACT32 ``[kv_heads, tokens, head_dim]``, oldest first."""
        parts = self._stored + ([self.pending] if self.pending is not None else [])
        return np.concatenate(parts, axis=1)


class IntegerCache:
    """Per-layer (key stream, value stream) pairs and the number of positions processed."""

    def __init__(self, num_layers: int, keys: KvStoreFormat | None, values: KvStoreFormat | None):
        self.layers = [(KvStream(keys), KvStream(values)) for _ in range(num_layers)]
        self.position = 0


class LambdaCache:
    """Per-layer (key stream, value stream) of the Λ cache (S sink slots + W-slot ring, stored
    unrotated, :class:`~llmfab.sim.lambda_cache.LambdaStream`) and the stream tokens processed."""

    def __init__(self, num_layers: int, shape: LambdaShape, keys: KvStoreFormat | None,
                 values: KvStoreFormat | None):
        self.shape = shape
        self.layers = [(LambdaStream(shape, keys), LambdaStream(shape, values)) for _ in range(num_layers)]
        self.position = 0

    def nbytes(self) -> int:
        """Bytes held by every layer's sinks, ring blocks and staging: bounded at any stream length
        (docs/numerics.md §13.2); once the ring is full it depends only on the stream length
        modulo the key/value block length."""
        return sum(k.nbytes() + v.nbytes() for k, v in self.layers)
