"""A compressed model runs its recipe's KV cache and attention shape through its caches."""

from __future__ import annotations

import torch

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


def test_dense_kv4_and_kv8_descriptions(tiny_hf_folder):
    recipe = tiny_recipe("w4a8kv4")
    _, _, model, windows = quantized_tiny(tiny_hf_folder, recipe)
    assert apply_kv_and_attention(model, recipe) == "dense attention, KV4"
    assert isinstance(model.new_cache().layers[0], Kv4KVCache)
    assert apply_kv_and_attention(model, tiny_recipe("w8a8kv8")).endswith("(KV8 not implemented)")
