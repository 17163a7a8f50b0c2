"""Float weights of a LLaMA-family model, named as in Hugging Face checkpoints, and their checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
LINEAR_NAMES = ATTENTION_PROJECTIONS + ("gate_proj", "up_proj", "down_proj")


def linear_weight_name(layer: int, linear: str) -> str:
    group = "self_attn" if linear in ATTENTION_PROJECTIONS else "mlp"
    return f"model.layers.{layer}.{group}.{linear}.weight"


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model of `config` needs, with its shape ([out, in] for linear layers)."""
    h, i = config.hidden_size, config.intermediate_size
    linear_shapes = {
        "q_proj": (config.q_dim, h), "k_proj": (config.kv_dim, h), "v_proj": (config.kv_dim, h),
        "o_proj": (h, config.q_dim), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i),
    }
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for layer in range(config.num_layers):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.input_layernorm.weight"] = (h,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (h,)
        for linear, shape in linear_shapes.items():
            shapes[linear_weight_name(layer, linear)] = shape
    return shapes


def validate_weights(config: ModelConfig, weights: Mapping[str, Any], source: str) -> None:
    """Raise InputError naming `source` if a weight is missing, unexpected or mis-shaped."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(weights))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{source}: checkpoint lacks weight(s) {', '.join(missing[:3])}{more}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise InputError(f"{source}: unexpected weight(s) {', '.join(extra[:3])} for this config")
    for name, shape in expected.items():
        got = tuple(weights[name].shape)
        if got != shape:
            raise InputError(
                f"{source}: tensor {name} has shape {list(got)} but the model config "
                f"(hidden {config.hidden_size}, intermediate {config.intermediate_size}, heads "
                f"{config.num_heads}/{config.num_kv_heads}, vocab {config.vocab_size}) needs "
                f"{list(shape)}; the file's metadata and tensors disagree"
            )
