"""Build an :class:`~llmfab.sim.integer_model.IntegerModel` from the fake-quant torch model.

The torch model's buffers (QuantLinear / QuantEmbedding codes, float16 scales, zero points, 2:4
pattern codes; float norm gains; RoPE frequencies) are the input; everything else is derived by
the offline conversions of docs/numerics.md (§5.1 scale multipliers, §6.3 norm constants).
:func:`integer_model_from_artifact` takes the KV cache format and the Λ shape from the artifact's
recipe, and the LM head's input width too: int8, or int16 codes (A16) when the recipe keeps the
head's input in float (``head_act_bits`` 16). :func:`round_to_nearest_model` makes such a model
without calibration, for tests and benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch

from llmfab.errors import InputError
from llmfab.quant.kv4 import KvGranularity
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig
from llmfab.quant.model import LlamaModel, iter_linears, replace_linear
from llmfab.quant.qlinear import QuantLinear, quantize_embeddings
from llmfab.quant.recipe import kv4_cache_config
from llmfab.quant.weight_quant import GroupQuantConfig, ScaleInit, ZeroPoint, quantize_groupwise
from llmfab.sim.integer_model import IntegerLayer, IntegerModel, KvStoreFormat
from llmfab.sim.kv_ring import LambdaShape
from llmfab.sim.linear_ops import IntegerWeight, code_max, prepare_weight
from llmfab.sim.vector_ops import prepare_norm


def integer_weight(module, name: str) -> IntegerWeight:
    """A QuantLinear or QuantEmbedding -> :class:`IntegerWeight`."""
    if not hasattr(module, "codes"):
        raise InputError(
            f"{name} is a float layer; the integer model needs a compressed model (quantize it first, "
            "e.g. with `llmfab quantize` or round_to_nearest_model)"
        )
    mask = getattr(module, "mask_codes", None)
    return prepare_weight(
        module.codes.numpy(),
        module.scales.float().numpy(),
        module.zeros.numpy(),
        module.group_size,
        None if mask is None else mask.numpy(),
        zero_halves=bool(module.zero_halves),
    )


def kv_store_format(config) -> KvStoreFormat:
    """A quant-side Kv4Config (4- or 8-bit codes) -> :class:`KvStoreFormat`."""
    return KvStoreFormat(config.granularity is KvGranularity.PER_CHANNEL, config.block_tokens, config.bits)


def head_act_bits(input_bits: int | None) -> int:
    """Integer input width of the LM head from its fake-quant per-token bits: 16 (A16) for a head
    whose input stays float (None), else the bits, which must be 8 or 16."""
    bits = 16 if input_bits is None else int(input_bits)
    try:
        code_max(bits)
    except ValueError as error:
        raise InputError(f"the LM head quantizes its input to {bits} bits; the integer model supports "
                         "8 or 16 (recipe head_act_bits)") from error
    return bits


def integer_model_from_artifact(artifact) -> IntegerModel:
    """The integer model of a loaded artifact (:func:`llmfab.quant.artifact.load_artifact`), with the
    KV cache format, attention shape (dense, or Λ with S sinks and a W window) and LM-head input
    width (recipe ``head_act_bits``) of its recipe."""
    recipe = artifact.recipe
    shape = LambdaShape(recipe.sinks, recipe.window) if recipe.lambda_attention else None
    head_bits = head_act_bits(recipe.head_input_bits)
    return integer_model_from_torch(artifact.model, kv4_cache_config(recipe), shape, head_bits)


@torch.no_grad()
def integer_model_from_torch(model: LlamaModel, kv4: Kv4CacheConfig | None = Kv4CacheConfig(),
                             lambda_shape: LambdaShape | None = None, head_bits: int | None = None) -> IntegerModel:
    """Convert a compressed fake-quant ``model``; ``kv4`` (4- or 8-bit codes) None keeps the cache in ACT32;
    ``lambda_shape`` (S sinks, W window) makes attention Λ-shaped, as
    :func:`llmfab.quant.lambda_attention.enable_lambda_attention` does in torch; ``head_bits`` is
    the LM head's input width, 8 or 16 (None: from the model's head, :func:`head_act_bits`)."""
    config = model.config
    eps = config.rms_norm_eps
    layers = []
    for index, block in enumerate(model.model.layers):
        attn, mlp = block.self_attn, block.mlp
        prefix = f"model.layers.{index}"
        layers.append(IntegerLayer(
            input_norm=prepare_norm(block.input_layernorm.weight.float().numpy(), eps),
            q_proj=integer_weight(attn.q_proj, f"{prefix}.self_attn.q_proj"),
            k_proj=integer_weight(attn.k_proj, f"{prefix}.self_attn.k_proj"),
            v_proj=integer_weight(attn.v_proj, f"{prefix}.self_attn.v_proj"),
            o_proj=integer_weight(attn.o_proj, f"{prefix}.self_attn.o_proj"),
            post_attention_norm=prepare_norm(block.post_attention_layernorm.weight.float().numpy(), eps),
            gate_proj=integer_weight(mlp.gate_proj, f"{prefix}.mlp.gate_proj"),
            up_proj=integer_weight(mlp.up_proj, f"{prefix}.mlp.up_proj"),
            down_proj=integer_weight(mlp.down_proj, f"{prefix}.mlp.down_proj"),
        ))
    return IntegerModel(
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        embedding=integer_weight(model.model.embed_tokens, "model.embed_tokens"),
        layers=tuple(layers),
        final_norm=prepare_norm(model.model.norm.weight.float().numpy(), eps),
        lm_head=integer_weight(model.lm_head, "lm_head"),
        inv_freq=model.model.rotary.inv_freq.double().numpy(),
        keys=None if kv4 is None else kv_store_format(kv4.keys),
        values=None if kv4 is None else kv_store_format(kv4.values),
        lambda_shape=lambda_shape,
        head_act_bits=head_act_bits(model.lm_head.act_bits) if head_bits is None else head_act_bits(head_bits),
    )


def magnitude_2to4_mask(weight: torch.Tensor) -> torch.Tensor:
    """bool ``[out, in]`` keeping the two largest |w| of every 4 consecutive input columns."""
    groups = weight.abs().reshape(weight.shape[0], -1, 4)
    top = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(weight.shape)


@torch.no_grad()
def round_to_nearest_model(model: LlamaModel, bits: int, group_size: int, act_bits: int = 8,
                           sparse: bool = False, zero_halves: bool = False) -> LlamaModel:
    """Quantize every decoder projection of ``model`` in place with round-to-nearest min-max group
    quantization (no calibration), optionally 2:4-pruned by magnitude, plus 8-bit embeddings."""
    quant = GroupQuantConfig(bits=bits, group_size=group_size, init=ScaleInit.MINMAX,
                             zero_point=ZeroPoint.HALF_INTEGER if zero_halves else ZeroPoint.INTEGER)
    for layer, name, module in list(iter_linears(model)):
        weight = module.weight.detach().float()
        mask = magnitude_2to4_mask(weight) if sparse else None
        quantized = quantize_groupwise(weight, quant, mask=mask, name=f"model.layers.{layer}.{name}")
        replace_linear(model, layer, name, QuantLinear(quantized, act_bits))
    quantize_embeddings(model, act_bits)
    return model
