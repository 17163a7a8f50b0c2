"""A compressed model runs its recipe's KV cache and attention shape through its caches."""

from __future__ import annotations

import dataclasses

import torch

from llmfab.quant.kv_cache import DenseKVCache
from llmfab.quant.kv_cache_4bit import Kv4KVCache
from llmfab.quant.lambda_attention import LambdaKVCache
from llmfab.quant.recipe_runtime import apply_kv_and_attention, cached_logits
from llmfab.tests.quant.tiny_quantized import quantized_tiny, tiny_recipe


def test_kv4_and_lambda_caches_follow_the_recipe(tiny_hf_folder):
    recipe = tiny_recipe("accllm", sinks=2, window=8)
    _, _, model, windows = quantized_tiny(tiny_hf_folder, recipe)
    dense = model(windows[:1])
    assert "Λ attention (2 sinks + 8 window), KV4" == apply_kv_and_attention(model, recipe)
    assert isinstance(model.new_cache().layers[0], LambdaKVCache)
    lam = cached_logits(model)(windows[:1])
    assert torch.isfinite(lam).all()
    assert torch.allclose(lam[:, :8], dense[:, :8], atol=0.5)  # the first tokens see everything
    assert not torch.allclose(lam[:, 16:], dense[:, 16:], atol=1e-3)  # later ones only sinks + window


def test_dense_kv4_and_kv8_caches_follow_the_recipe(tiny_hf_folder):
    recipe = tiny_recipe("w4a8kv4")
    _, _, model, windows = quantized_tiny(tiny_hf_folder, recipe)
    logits = {}
    for kv_bits in (4, 8, 16):
        described = apply_kv_and_attention(model, dataclasses.replace(recipe, kv_bits=kv_bits))
        assert described == f"dense attention, {'float KV cache' if kv_bits == 16 else f'KV{kv_bits}'}"
        layer = model.new_cache().layers[0]
        if kv_bits == 16:
            assert isinstance(layer, DenseKVCache)
        else:
            assert isinstance(layer, Kv4KVCache) and layer.config.keys.bits == layer.config.values.bits == kv_bits
        logits[kv_bits] = cached_logits(model)(windows[:1])
    error = {bits: (logits[bits] - logits[16]).abs().max() for bits in (4, 8)}
    assert 0 < error[8] < error[4] / 2  # KV8 is packed (not float) and closer to float (A8 rounding flips blur it)


def test_lambda_attention_with_kv8_stores_8_bit_sinks_and_ring(tiny_hf_folder):
    recipe = tiny_recipe("accllm", sinks=2, window=8, kv_bits=8)
    _, _, model, windows = quantized_tiny(tiny_hf_folder, recipe)
    assert apply_kv_and_attention(model, recipe) == "Λ attention (2 sinks + 8 window), KV8"
    cache = model.new_cache()
    model(windows[:1], cache)
    layer = cache.layers[0]
    assert layer.window_keys.bits == layer.sink_values.bits == 8
    assert layer.nbytes() > 0
