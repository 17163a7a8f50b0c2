"""Packed (4- and 8-bit) KV caches for decoding: real packed bytes, ring stores keep the last W
tokens, dense KV4/KV8 decoding close to float, bytes-per-token arithmetic, bad granularity names."""

from __future__ import annotations

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.hf_reader import read_hf_folder
from llmfab.quant.kv4 import Kv4Config, KvGranularity
from llmfab.quant.kv_cache_4bit import (
    FloatRing,
    Kv4BlockRing,
    Kv4CacheConfig,
    Kv4KVCache,
    Kv4TokenRing,
    kv_bytes_per_token,
    make_store,
)
from llmfab.quant.lambda_attention import disable_lambda_attention, enable_kv4
from llmfab.quant.model import LlamaModel

CONFIGS = [Kv4CacheConfig.named(k, v, block_tokens=4, bits=b) for k in ("per_token", "per_channel")
           for v in ("per_token", "per_channel") for b in (4, 8)]


def stream(tokens, seed=0, heads=2, head_dim=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, heads, tokens, head_dim, generator=gen)


@pytest.mark.parametrize("store", [FloatRing(5), Kv4TokenRing(5), Kv4BlockRing(5, 2), Kv4TokenRing(5, bits=8),
                                   Kv4BlockRing(5, 2, bits=8)], ids=lambda s: f"{type(s).__name__}-{getattr(s, 'bits', 16)}")
def test_store_keeps_the_last_capacity_tokens_in_order(store):
    x = stream(13)
    returned = [store.append(x[:, :, :3])] + [store.append(x[:, :, i : i + 1]) for i in range(3, 13)]
    held = store.read()
    assert held.shape == (1, 2, 5, 8)
    tolerance = {FloatRing: 0, Kv4TokenRing: 0.5, Kv4BlockRing: 0.5}[type(store)] * 15 / ((1 << getattr(store, "bits", 4)) - 1)
    assert (held - x[:, :, -5:]).abs().max() <= tolerance
    # what append returned is what a later read gives (per-channel: once the block has filled)
    if not isinstance(store, Kv4BlockRing):
        assert torch.equal(torch.cat(returned, dim=2)[:, :, -5:].float(), held.float())


@pytest.mark.parametrize("bits", [4, 8])
def test_token_ring_bytes_are_packed_codes_plus_fp16_scale_and_offset(bits):
    ring = Kv4TokenRing(16, bits)
    ring.append(stream(40, head_dim=64))
    assert ring.nbytes() == 16 * 2 * (64 * bits // 8 + 2 + 2)  # slots * heads * (codes + scale + offset)
    assert FloatRing(16).nbytes() == 0


def test_block_ring_memory_is_bounded():
    ring = Kv4BlockRing(capacity=8, block_tokens=4)
    sizes = []
    for i in range(50):
        ring.append(stream(1, seed=i))
        sizes.append(ring.nbytes())
    assert max(sizes[20:]) == max(sizes[10:])


def test_dense_kv8_cache_reports_real_bytes_and_is_finer_than_kv4():
    k, v = stream(12, seed=1), stream(12, seed=2)
    errors = {}
    for bits in (4, 8):
        cache = Kv4KVCache(Kv4CacheConfig.named("per_channel", "per_token", block_tokens=4, bits=bits))
        got_k, got_v = cache.append(k, v)
        errors[bits] = float((got_k - k).abs().mean() + (got_v - v).abs().mean())
        codes = 8 * bits // 8  # head_dim 8
        per_token = 2 * (codes + 4)  # 2 heads: codes + fp16 scale and offset
        per_channel_block = 2 * (4 * codes + 8 * 4)  # 4 tokens of codes + fp16 scale/offset per channel
        assert cache.nbytes() == 12 * per_token + 3 * per_channel_block
    assert errors[8] < errors[4] / 12


def test_dense_kv4_cache_reports_real_bytes_and_round_trips():
    cache = Kv4KVCache(Kv4CacheConfig.named("per_token", "per_channel", block_tokens=4))
    k, v = stream(10, seed=1), stream(10, seed=2)
    got_k, got_v = cache.append(k, v)
    assert got_k.shape == k.shape and cache.length == 10
    assert (got_k - k).abs().max() < 0.5 and (got_v - v).abs().max() < 0.5
    keys = 10 * 2 * (4 + 4)  # per token: 4 code bytes + fp16 scale + offset, 2 heads
    block = 2 * 4 * 4 + 2 * 8 * (2 + 2)  # codes of 4 tokens + fp16 scale/offset per channel, 2 heads
    values = 2 * block + 2 * 2 * 8 * 2  # two full blocks + 2 float16 tokens waiting
    assert cache.nbytes() == keys + values


@pytest.mark.parametrize("kv4", CONFIGS, ids=lambda c: f"K-{c.keys.granularity.value}-V-{c.values.granularity.value}-{c.keys.bits}")
def test_dense_kv4_decoding_is_close_to_float(tiny_hf_folder, kv4):
    config, weights, _ = read_hf_folder(tiny_hf_folder)
    model = LlamaModel.from_weights(config, weights)
    ids = torch.randint(0, config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids)
        float_cache = model.new_cache()
        model(ids, float_cache)
        enable_kv4(model, kv4)
        cache = model.new_cache()
        logits = torch.cat([model(ids[:, :8], cache)] + [model(ids[:, i : i + 1], cache) for i in range(8, 24)], 1)
    disable_lambda_attention(model)
    error = (logits - reference).abs().max().item()
    assert 1e-6 < error < 0.5
    assert cache.nbytes() * 8 // kv4.keys.bits < float_cache.nbytes()  # head_dim 16: fp16 params weigh more


def test_kv_bytes_per_token():
    config = ModelConfig("llama", 100, 576, 1536, 30, 9, 3, 64, 8192, 1e-5, 1e5)
    assert kv_bytes_per_token(config) == 30 * 2 * 3 * 64 * 2  # float16
    per_token = Kv4CacheConfig.named("per_token", "per_token")
    assert kv_bytes_per_token(config, per_token) == 30 * 2 * 3 * (32 + 4)
    per_channel = Kv4CacheConfig.named("per_channel", "per_channel", block_tokens=32)
    assert kv_bytes_per_token(config, per_channel) == 30 * 2 * 3 * (32 + 4 * 64 / 32)
    default = Kv4CacheConfig()  # measured choice: per-channel keys, per-token values
    assert kv_bytes_per_token(config, default) == 30 * 3 * ((32 + 4 * 64 / 32) + (32 + 4))
    kv8 = Kv4CacheConfig.named("per_channel", "per_token", bits=8)
    assert kv_bytes_per_token(config, kv8) == 30 * 3 * ((64 + 4 * 64 / 32) + (64 + 4))


def test_unknown_granularity_is_an_input_error():
    with pytest.raises(InputError, match="per_token"):
        Kv4CacheConfig.named("per_head", "per_token")


@pytest.mark.parametrize("bits", [4, 8])
def test_make_store_picks_the_layout(bits):
    assert type(make_store(4, None)) is FloatRing
    token = make_store(4, Kv4Config(KvGranularity.PER_TOKEN, bits=bits))
    assert type(token) is Kv4TokenRing and token.bits == bits
    block = make_store(4, Kv4Config(KvGranularity.PER_CHANNEL, block_tokens=32, bits=bits))
    assert type(block) is Kv4BlockRing and block.block_tokens == 4 and block.bits == bits
