"""Λ-shaped attention: every query sees the first S tokens (attention sinks) and the last W
non-sink tokens up to itself; nothing else.

Token i of the stream (0-based) sees sinks ``0 .. min(i, S-1)`` and window tokens
``max(S, i-W+1) .. i``. If S + W >= sequence length this is plain causal attention.

Positions (StreamingLLM): keys are cached *before* RoPE and rotated by their slot in the cache —
sinks at 0..S-1, window tokens contiguous after them — and the query sits at its own slot,
``min(i, S+W-1)``. So no position ever exceeds S+W-1, at any stream length. Because RoPE scores
depend only on the position difference, a window key j is at distance i - j from query i and a
sink s at distance min(i, S+W-1) - s; :func:`lambda_attention` uses exactly these distances, with
small local positions, for prefill chunks and single decode steps alike.

Memory: prefill processes queries in chunks of C, holding scores ``[B, H, C, S + W_prev + C]``
(W_prev <= W cached window tokens); decoding holds S sink slots and a W-slot ring per layer.
"""

from __future__ import annotations

import math

import torch

from llmfab.errors import InputError
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig, make_store
from llmfab.quant.rope import RotaryEmbedding, apply_rope


def check_lambda_shape(sinks: int, window: int, context: int | None = None) -> None:
    """InputError unless sinks >= 0, window >= 1 and (if given) window <= context."""
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise InputError(f"attention sinks {sinks!r} must be a whole number >= 0 (e.g. 4)")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(f"attention window {window!r} must be a whole number >= 1 (e.g. 1024)")
    if context is not None and window > context:
        raise InputError(
            f"attention window {window} is larger than the evaluation context {context}; "
            f"use a window <= {context} (a larger one is plain dense attention)"
        )


def _rotate(x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding) -> torch.Tensor:
    """x [B, heads, n, D] rotated by positions [n] (int)."""
    cos, sin = rotary(positions.unsqueeze(0))
    return apply_rope(x, cos.to(x.dtype), sin.to(x.dtype))


def lambda_attention(
    q: torch.Tensor,
    q_start: int,
    sink_k: torch.Tensor,
    sink_v: torch.Tensor,
    win_k: torch.Tensor,
    win_v: torch.Tensor,
    win_start: int,
    sinks: int,
    window: int,
    rotary: RotaryEmbedding,
    chunk: int = 256,
) -> torch.Tensor:
    """Λ attention of T queries over unrotated sink and window keys.

    Args:
        q: unrotated queries [B, H, T, D], stream indices q_start .. q_start+T-1.
        sink_k, sink_v: unrotated [B, KV, n_s, D], stream indices 0 .. n_s-1 (n_s <= sinks).
        win_k, win_v: unrotated [B, KV, n_w, D], contiguous stream indices win_start .. (all >= sinks),
            covering at least the last `window` non-sink tokens before each query, up to the last query.
        sinks, window: S and W.
        rotary: the model's RotaryEmbedding (cos/sin for integer positions).
        chunk: queries per block; memory is O(chunk * (n_s + window + chunk)) per head.

    Returns:
        [B, H, T, D] in float32.
    """
    b, h, t, d = q.shape
    kv = sink_k.shape[1] if sink_k.numel() else win_k.shape[1]
    groups = h // kv
    scale = 1.0 / math.sqrt(d)
    q = q.float()
    sink_k, sink_v, win_k, win_v = (x.float().reshape(b, kv, 1, -1, d) for x in (sink_k, sink_v, win_k, win_v))
    n_s, n_w = sink_k.shape[3], win_k.shape[3]
    sink_idx = torch.arange(n_s)
    sink_k = _rotate(sink_k.reshape(b, kv, n_s, d), sink_idx, rotary).reshape(b, kv, 1, n_s, d)
    out = []
    for c0 in range(q_start, q_start + t, chunk):
        c1 = min(c0 + chunk, q_start + t)
        qi = torch.arange(c0, c1)
        qc = q[:, :, c0 - q_start : c1 - q_start]
        lo = max(win_start, c0 - window + 1)  # first window key any query of the chunk sees
        wk = win_k[:, :, :, lo - win_start : c1 - win_start]
        wv = win_v[:, :, :, lo - win_start : c1 - win_start]
        wj = torch.arange(lo, lo + wk.shape[3])
        # window: relative distance i - j, rotated with small local positions
        q_win = _rotate(qc, qi - lo, rotary).reshape(b, kv, groups, c1 - c0, d)
        k_win = _rotate(wk.reshape(b, kv, -1, d), wj - lo, rotary).reshape(b, kv, 1, -1, d)
        win_scores = (q_win @ k_win.transpose(-1, -2)) * scale
        win_visible = (wj[None, :] <= qi[:, None]) & (wj[None, :] > qi[:, None] - window)
        # sinks: the query sits at its cache slot min(i, S+W-1), sinks at 0..S-1
        q_sink = _rotate(qc, qi.clamp(max=sinks + window - 1), rotary).reshape(b, kv, groups, c1 - c0, d)
        sink_scores = (q_sink @ sink_k.transpose(-1, -2)) * scale
        sink_visible = sink_idx[None, :] <= qi[:, None]
        scores = torch.cat([sink_scores, win_scores], dim=-1)
        visible = torch.cat([sink_visible, win_visible], dim=-1)
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        o = probs[..., :n_s] @ sink_v + probs[..., n_s:] @ wv
        out.append(o.reshape(b, h, c1 - c0, d))
    return torch.cat(out, dim=2)


class LambdaKVCache:
    """Λ cache of one layer: S sink slots plus a W-slot ring of the latest non-sink tokens.

    Keys are stored unrotated (``rotates_keys``): `Attention.forward` hands over unrotated
    q, k, v [B, heads, T, D] to :meth:`attend`, which returns [B, H, T, D]. Storage is float, or
    packed 4- or 8-bit (``kv4.keys.bits``) for sinks and ring when ``kv4`` is given. Memory stays constant at any length.
    """

    rotates_keys = True

    def __init__(self, sinks: int, window: int, rotary: RotaryEmbedding,
                 kv4: Kv4CacheConfig | None = None, chunk: int = 256):
        check_lambda_shape(sinks, window)
        self.sinks, self.window, self.rotary, self.chunk = sinks, window, rotary, chunk
        self.seen = 0  # tokens processed so far
        key_cfg, value_cfg = (kv4.keys, kv4.values) if kv4 is not None else (None, None)
        self.sink_keys = make_store(max(sinks, 1), key_cfg)
        self.sink_values = make_store(max(sinks, 1), value_cfg)
        self.window_keys = make_store(window, key_cfg)
        self.window_values = make_store(window, value_cfg)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, T, D], k, v [B, KV, T, D], all unrotated, stream indices seen .. seen+T-1."""
        t = k.shape[2]
        to_sinks = max(0, min(self.sinks - self.seen, t))
        old_sinks = (self._read(self.sink_keys, k), self._read(self.sink_values, v))
        old_window = (self._read(self.window_keys, k), self._read(self.window_values, v))
        win_start = self.seen + to_sinks - old_window[0].shape[2]
        new_sinks = (self.sink_keys.append(k[:, :, :to_sinks]), self.sink_values.append(v[:, :, :to_sinks])) \
            if to_sinks else (k[:, :, :0], v[:, :, :0])
        new_window = (self.window_keys.append(k[:, :, to_sinks:]), self.window_values.append(v[:, :, to_sinks:])) \
            if to_sinks < t else (k[:, :, :0], v[:, :, :0])
        sink_k, sink_v = (torch.cat([o.to(n.dtype), n], dim=2) for o, n in zip(old_sinks, new_sinks))
        win_k, win_v = (torch.cat([o.to(n.dtype), n], dim=2) for o, n in zip(old_window, new_window))
        out = lambda_attention(q, self.seen, sink_k, sink_v, win_k, win_v, win_start,
                               self.sinks, self.window, self.rotary, self.chunk)
        self.seen += t
        return out.to(q.dtype)

    @staticmethod
    def _read(store, like: torch.Tensor) -> torch.Tensor:
        held = store.read()
        return held if held.dim() == 4 else like[:, :, :0]

    @property
    def length(self) -> int:
        """Tokens held (sinks + window), never more than S + W."""
        return min(self.seen, self.sinks) + min(max(self.seen - self.sinks, 0), self.window)

    def nbytes(self) -> int:
        """Bytes actually stored in sink slots and ring (codes, scales, float staging)."""
        stores = (self.sink_keys, self.sink_values, self.window_keys, self.window_values)
        return sum(s.nbytes() for s in stores)


class DenseCoreDisabled:
    """Attention core installed by :func:`enable_lambda_attention`: a forward without a Λ cache
    would silently be dense attention, so it raises instead."""

    def __call__(self, q, k, v):
        raise InputError(
            "this model uses Λ-shaped attention, which needs its cache: call model(ids, model.new_cache()) "
            "(or disable_lambda_attention(model) for dense attention)"
        )


def enable_lambda_attention(model, sinks: int = 4, window: int = 1024, kv4: Kv4CacheConfig | None = None,
                            context: int | None = None, chunk: int = 256) -> None:
    """Make `model.new_cache()` build Λ caches (S sinks + W ring; float or packed) for every layer.

    Args:
        model: a :class:`~llmfab.quant.model.LlamaModel`.
        sinks, window: S >= 0 and W >= 1.
        kv4: store sinks and ring packed, 4 or 8 bits as its configs say (None: float).
        context: evaluation context length, if one applies; W must not exceed it.
        chunk: prefill queries per block (memory O(chunk * (S + W + chunk)) per head).
    """
    check_lambda_shape(sinks, window, context)
    if chunk < 1:
        raise InputError(f"prefill chunk {chunk} must be >= 1 query")
    rotary = model.model.rotary
    model.cache_factory = lambda: LambdaKVCache(sinks, window, rotary, kv4, chunk)
    for layer in model.model.layers:
        layer.self_attn.core = DenseCoreDisabled()


def disable_lambda_attention(model) -> None:
    """Back to dense attention and dense float caches."""
    from llmfab.quant.model import DenseAttention

    model.cache_factory = None
    for layer in model.model.layers:
        layer.self_attn.core = DenseAttention()


def enable_kv4(model, kv4: Kv4CacheConfig = Kv4CacheConfig()) -> None:
    """Dense attention with a packed cache (4 or 8 bits as ``kv4`` says): `model.new_cache()` builds
    Kv4KVCache layers."""
    from llmfab.quant.kv_cache_4bit import Kv4KVCache

    disable_lambda_attention(model)
    model.cache_factory = lambda: Kv4KVCache(kv4)
