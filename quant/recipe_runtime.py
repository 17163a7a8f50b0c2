"""Set up a (fake-quant) model's KV cache and attention shape as its recipe says.

The weights and activations of a compressed model are fixed when it is built (quant/qlinear.py);
the KV cache and Λ attention live in the caches that ``model.new_cache()`` makes, so they act only
when the model runs with a cache: generation does, and perplexity must prefill every window
through a fresh cache (:func:`cached_logits`).
"""

from __future__ import annotations

import torch

from llmfab.quant.lambda_attention import disable_lambda_attention, enable_kv4, enable_lambda_attention
from llmfab.quant.recipe import FLOAT_BITS, Recipe, kv4_cache_config


def apply_kv_and_attention(model, recipe: Recipe) -> str:
    """Install the recipe's KV cache (packed 4- or 8-bit, or float) and Λ attention on ``model``.

    Returns a short description of what runs, e.g. ``"Λ attention (4 sinks + 1024 window), KV4"``.
    """
    kv = kv4_cache_config(recipe)
    cache = "float KV cache" if recipe.kv_bits == FLOAT_BITS else f"KV{recipe.kv_bits}"
    disable_lambda_attention(model)  # start from dense attention and float caches
    if recipe.lambda_attention:
        enable_lambda_attention(model, recipe.sinks, recipe.window, kv4=kv)
        return f"Λ attention ({recipe.sinks} sinks + {recipe.window} window), {cache}"
    if kv is not None:
        enable_kv4(model, kv)
    return f"dense attention, {cache}"


def cached_logits(model):
    """``ids [1, T] -> logits [1, T, vocab]`` through a fresh cache per call (for perplexity)."""

    @torch.no_grad()
    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(ids, model.new_cache())

    return logits
