"""What the scheduler compiles, independent of the weights: every linear's shape and format, the
cache formats, the norms, and (when weights are at hand) the integer fields to pack.

The model is a LLaMA decoder (quant.config.ModelConfig) compressed by a quant.recipe.Recipe.
The same description serves a real artifact and a `--shape-only` compile from a config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.compiler.isa import ActWidth, KvMode
from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.kv4 import KvGranularity
from llmfab.quant.qlinear import EMBEDDING_BITS
from llmfab.quant.recipe import Recipe, kv4_cache_config
from llmfab.quant.weight_quant import ZeroPoint
from llmfab.quant.weights import LINEAR_NAMES


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer as the engine runs it. ``layer`` is None for the LM head."""

    layer: int | None
    name: str
    out_features: int
    in_features: int
    bits: int
    group_size: int
    sparse: bool
    half_zero: bool

    @property
    def label(self) -> str:
        return self.name if self.layer is None else f"layers.{self.layer}.{self.name}"


@dataclass(frozen=True)
class ModelPlan:
    """A compressed model's shapes and formats."""

    name: str
    config: ModelConfig
    recipe: Recipe
    key_mode: KvMode
    value_mode: KvMode
    block_tokens: int
    kv_bits: int  # cache code width (4 or 8; unused for ACT32 streams)

    @classmethod
    def build(cls, config: ModelConfig, recipe: Recipe, name: str = "") -> "ModelPlan":
        if recipe.act_bits != 8:
            raise InputError(f"recipe {recipe.name} has {recipe.act_bits}-bit activations; the engine's "
                             "datapath takes int8 activation codes (use a recipe with --act-bits 8; only the "
                             "LM head may take 16-bit codes, --head-act-bits 16)")
        recipe.check_model(config)
        key_mode, value_mode, block, bits = kv_modes(recipe)
        return cls(name or config.name, config, recipe, key_mode, value_mode, block, bits)

    @property
    def head_act_width(self) -> ActWidth:
        """The LM head's input codes: A8, or A16 (int16, docs/numerics.md §3.1) when the recipe's
        head_act_bits keeps the head's input wide (the w8a8kv8 preset)."""
        return ActWidth.A8 if self.recipe.head_input_bits == 8 else ActWidth.A16

    @property
    def lambda_attention(self) -> bool:
        return self.recipe.lambda_attention

    def layer_linears(self, layer: int) -> list[LinearSpec]:
        """The seven projections of a decoder layer, in execution order."""
        c, r = self.config, self.recipe
        shapes = {"q_proj": (c.q_dim, c.hidden_size), "k_proj": (c.kv_dim, c.hidden_size),
                  "v_proj": (c.kv_dim, c.hidden_size), "o_proj": (c.hidden_size, c.q_dim),
                  "gate_proj": (c.intermediate_size, c.hidden_size), "up_proj": (c.intermediate_size, c.hidden_size),
                  "down_proj": (c.hidden_size, c.intermediate_size)}
        half = r.zero_point is ZeroPoint.HALF_INTEGER
        return [LinearSpec(layer, name, *shapes[name], r.weight_bits, r.group_size, r.sparse, half)
                for name in LINEAR_NAMES]

    @property
    def lm_head(self) -> LinearSpec:
        """8-bit codes, one group (and scale) per row (quant.qlinear.quantize_embeddings)."""
        c = self.config
        return LinearSpec(None, "lm_head", c.vocab_size, c.hidden_size, EMBEDDING_BITS, c.hidden_size, False, False)

    def all_linears(self) -> list[LinearSpec]:
        out = []
        for layer in range(self.config.num_layers):
            out.extend(self.layer_linears(layer))
        return out + [self.lm_head]


def kv_modes(recipe: Recipe) -> tuple[KvMode, KvMode, int, int]:
    """(key mode, value mode, block tokens, code bits) of the recipe's cache
    (quant.recipe.kv4_cache_config): 4- or 8-bit codes per token or per channel, ACT32 for a float cache."""
    config = kv4_cache_config(recipe)
    if config is None:
        return KvMode.ACT32, KvMode.ACT32, 1, 4

    def mode(granularity: KvGranularity) -> KvMode:
        return KvMode.KV4_CHANNEL if granularity is KvGranularity.PER_CHANNEL else KvMode.KV4_TOKEN

    keys, values = config.keys, config.values
    if keys.bits != values.bits:
        raise InputError(f"recipe {recipe.name}: keys with {keys.bits}-bit and values with {values.bits}-bit codes; "
                         "the engine's cache unit takes one code width for both")
    channel = [c.block_tokens for c in (keys, values) if c.granularity is KvGranularity.PER_CHANNEL]
    if len(set(channel)) > 1:
        raise InputError(f"recipe {recipe.name}: per-channel keys and values with different blocks {channel}")
    return mode(keys.granularity), mode(values.granularity), (channel[0] if channel else 1), keys.bits


def reference_integer_model(artifact):
    """The :class:`~llmfab.sim.integer_model.IntegerModel` a program compiled from ``artifact`` (a
    loaded artifact) must match bit for bit."""
    from llmfab.sim.integer_weights import integer_model_from_artifact

    return integer_model_from_artifact(artifact)


class WeightSource:
    """Integer fields of a compressed fake-quant model (quant.model.LlamaModel), as numpy."""

    def __init__(self, model):
        self.model = model

    def module(self, spec: LinearSpec):
        from llmfab.quant.model import projection

        if spec.layer is None:
            return self.model.lm_head
        return projection(self.model.model.layers[spec.layer], spec.name)

    def linear(self, spec: LinearSpec) -> dict[str, np.ndarray]:
        """codes, zeros, scales (float32), patterns (or None) of ``spec``; InputError if the stored
        layer does not have the format the plan expects."""
        module = self.module(spec)
        if not hasattr(module, "codes"):
            raise InputError(f"{spec.label} is a float layer; compile a compressed artifact (llmfab quantize)")
        mask = getattr(module, "mask_codes", None)
        found = (int(module.bits), int(module.group_size), mask is not None, bool(module.zero_halves))
        wanted = (spec.bits, spec.group_size, spec.sparse, spec.half_zero)
        if found != wanted:
            raise InputError(f"{spec.label}: stored as (bits, group, 2:4, half zeros) = {found}, but the recipe "
                             f"says {wanted}; the artifact is inconsistent, quantize again")
        return {"codes": module.codes.numpy(), "zeros": module.zeros.numpy(),
                "scales": module.scales.float().numpy(), "patterns": None if mask is None else mask.numpy()}

    def embedding(self) -> dict[str, np.ndarray]:
        table = self.model.model.embed_tokens
        if not hasattr(table, "codes"):
            raise InputError("the embedding table is float; compile a compressed artifact (llmfab quantize)")
        return {"codes": table.codes.numpy(), "zeros": table.zeros.numpy(),
                "scales": table.scales.float().numpy(), "half_zero": bool(table.zero_halves)}

    def norm_gammas(self, layer: int | None) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        if layer is None:
            return self.model.model.norm.weight.detach().float().numpy()
        block = self.model.model.layers[layer]
        return (block.input_layernorm.weight.detach().float().numpy(),
                block.post_attention_layernorm.weight.detach().float().numpy())

    def inv_freq(self) -> np.ndarray:
        return self.model.model.rotary.inv_freq.double().numpy()
