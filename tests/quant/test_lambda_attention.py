"""Λ-shaped attention: against a per-query brute-force reference (explicit sink + window cache,
RoPE by slot), prefill vs token-by-token decoding, equality with dense when S+W >= T, constant
memory, and the input errors."""

from __future__ import annotations

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.hf_reader import read_hf_folder
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig
from llmfab.quant.lambda_attention import (
    check_lambda_shape,
    disable_lambda_attention,
    enable_lambda_attention,
    lambda_attention,
)
from llmfab.quant.model import LlamaModel
from llmfab.quant.rope import apply_rope


@pytest.fixture(scope="module")
def tiny(tiny_hf_folder):
    config, weights, _ = read_hf_folder(tiny_hf_folder)
    return LlamaModel.from_weights(config, weights)


@pytest.fixture()
def model(tiny):
    yield tiny
    disable_lambda_attention(tiny)


def ids_for(model, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (2, length), generator=gen)


def reference_lambda(q, k, v, sinks, window, rotary):
    """Per query i: cache = sinks 0..min(i,S-1) + tokens max(S, i-W+1)..i at slots 0..n-1, the
    query at slot n-1, softmax over the cache. q [B,H,T,D], k, v [B,KV,T,D] unrotated."""
    b, h, t, d = q.shape
    groups = h // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = torch.empty_like(q)
    for i in range(t):
        kept = list(range(min(i + 1, sinks))) + list(range(max(sinks, i - window + 1), i + 1))
        slots = torch.arange(len(kept)).unsqueeze(0)
        cos, sin = rotary(slots)
        keys = apply_rope(k[:, :, kept], cos, sin)
        query = apply_rope(q[:, :, i : i + 1], cos[:, -1:], sin[:, -1:])
        probs = torch.softmax(query @ keys.transpose(-1, -2) / d**0.5, dim=-1)
        out[:, :, i : i + 1] = probs @ v[:, :, kept]
    return out


@pytest.mark.parametrize("sinks,window,chunk", [(4, 6, 5), (0, 3, 4), (2, 1, 16), (3, 40, 7)])
def test_kernel_matches_per_query_reference(tiny, sinks, window, chunk):
    gen = torch.Generator().manual_seed(1)
    h, kv, t, d = tiny.config.num_heads, tiny.config.num_kv_heads, 30, tiny.config.head_dim
    q = torch.randn(1, h, t, d, generator=gen)
    k, v = torch.randn(2, 1, kv, t, d, generator=gen)
    s = min(sinks, t)
    got = lambda_attention(q, 0, k[:, :, :s], v[:, :, :s], k[:, :, s:], v[:, :, s:], s,
                           sinks, window, tiny.model.rotary, chunk)
    want = reference_lambda(q, k, v, sinks, window, tiny.model.rotary)
    assert (got - want).abs().max().item() <= 1e-5


def test_equals_dense_attention_when_everything_fits(model):
    ids = ids_for(model, 50)
    with torch.no_grad():
        dense = model(ids)
        enable_lambda_attention(model, sinks=4, window=46, chunk=8)
        lam = model(ids, model.new_cache())
    assert (dense - lam).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sinks,window", [(4, 10), (0, 5), (3, 1)])
def test_prefill_equals_token_by_token_decoding(model, sinks, window):
    ids = ids_for(model, 60)
    with torch.no_grad():
        dense = model(ids)
    enable_lambda_attention(model, sinks=sinks, window=window, chunk=7)
    with torch.no_grad():
        prefill = model(ids, model.new_cache())
        cache = model.new_cache()
        stepped = torch.cat([model(ids[:, i : i + 1], cache) for i in range(60)], dim=1)
        cache = model.new_cache()  # uneven prefill chunks, then steps
        mixed = torch.cat([model(ids[:, :13], cache), model(ids[:, 13:40], cache)]
                          + [model(ids[:, i : i + 1], cache) for i in range(40, 60)], dim=1)
    assert (prefill - stepped).abs().max().item() <= 1e-4
    assert (prefill - mixed).abs().max().item() <= 1e-4
    assert (prefill - dense).abs().max().item() > 1e-2  # the window really cuts context


def test_decode_positions_never_exceed_the_cache(model):
    """StreamingLLM positions: at stream index 40..59 with S=2, W=6 no RoPE position >= S+W."""
    enable_lambda_attention(model, sinks=2, window=6)
    seen = []

    def spy(positions):
        seen.append(int(positions.max()))
        return model.model.rotary(positions)

    with torch.no_grad():
        cache = model.new_cache()
        model(ids_for(model, 40), cache)
        for layer in cache.layers:
            layer.rotary = spy
        for i in range(20):
            model(ids_for(model, 1, seed=i), cache)
    assert seen and max(seen) == 2 + 6 - 1


def test_cache_memory_is_constant(model):
    enable_lambda_attention(model, sinks=4, window=8)
    cache = model.new_cache()
    sizes = []
    with torch.no_grad():
        model(ids_for(model, 12), cache)
        for i in range(30):
            model(ids_for(model, 1, seed=i), cache)
            sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1
    assert all(layer.length == 12 for layer in cache.layers)


def test_kv4_ring_prefill_equals_decoding_per_token(model):
    enable_lambda_attention(model, sinks=2, window=9, kv4=Kv4CacheConfig.named("per_token", "per_token"))
    ids = ids_for(model, 40)
    with torch.no_grad():
        prefill = model(ids, model.new_cache())
        cache = model.new_cache()
        stepped = torch.cat([model(ids[:, i : i + 1], cache) for i in range(40)], dim=1)
        enable_lambda_attention(model, sinks=2, window=9)
        float_cache = model.new_cache()
        floats = model(ids, float_cache)
    assert (prefill - stepped).abs().max().item() <= 1e-4
    assert 0 < (prefill - floats).abs().max().item() < 0.5  # quantized, but close
    assert cache.nbytes() * 3 < float_cache.nbytes()


def test_kv4_per_channel_ring_runs_and_stays_bounded(model):
    enable_lambda_attention(model, sinks=2, window=9, kv4=Kv4CacheConfig.named("per_channel", "per_channel", 4))
    cache = model.new_cache()
    sizes = []
    with torch.no_grad():
        for i in range(40):
            model(ids_for(model, 1, seed=i), cache)
            sizes.append(cache.nbytes())
    assert max(sizes[20:]) == max(sizes[11:])  # periodic in the block length, never growing


@pytest.mark.parametrize("sinks,window,context", [(-1, 8, None), (4, 0, None), (4, 2.5, None), (4, 1024, 512)])
def test_bad_shapes_are_input_errors(model, sinks, window, context):
    with pytest.raises(InputError):
        check_lambda_shape(sinks, window, context)
    with pytest.raises(InputError):
        enable_lambda_attention(model, sinks=sinks, window=window, context=context)


def test_forward_without_lambda_cache_is_refused(model):
    enable_lambda_attention(model, sinks=4, window=8)
    with pytest.raises(InputError, match="new_cache"):
        model(ids_for(model, 5))
    disable_lambda_attention(model)
    model(ids_for(model, 5))


def test_prefill_scores_stay_banded(tiny, monkeypatch):
    """A 600-token prefill with S=3, W=16, chunk=32 never builds more than chunk x (S + W + chunk)
    scores: memory is bounded by the band, not T x T."""
    widths = []
    softmax = torch.softmax

    def spy(x, dim):
        widths.append(tuple(x.shape[-2:]))
        return softmax(x, dim=dim)

    monkeypatch.setattr(torch, "softmax", spy)
    enable_lambda_attention(tiny, sinks=3, window=16, chunk=32)
    try:
        with torch.no_grad():
            tiny(ids_for(tiny, 600)[:1], tiny.new_cache())
    finally:
        disable_lambda_attention(tiny)
    assert widths and max(w[0] for w in widths) == 32
    assert max(w[1] for w in widths) <= 3 + 16 + 32
