"""Our LLaMA-family forward pass in torch: the float reference every later stage compares to.

Parameter names follow Hugging Face's LlamaForCausalLM, so checkpoints load by name. Two
seams let later stages change the numerics without copying this file:
  * every projection is a module in `layer.self_attn` / `layer.mlp`, replaced with
    `replace_linear(model, layer, name, module)` (e.g. by a fake-quant linear);
  * attention over cached keys/values is an `AttentionCore` object (dense softmax here),
    and the per-layer KV cache comes from `ModelCache`'s factory. A cache that declares
    `rotates_keys = True` receives unrotated q/k/v in `cache.attend(q, k, v) -> out` and
    places RoPE itself (Λ-attention assigns positions by cache slot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmfab.quant.config import ModelConfig
from llmfab.quant.kv_cache import ModelCache
from llmfab.quant.rope import RotaryEmbedding, apply_rope
from llmfab.quant.weights import ATTENTION_PROJECTIONS, LINEAR_NAMES


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class DenseAttention:
    """Causal softmax attention of T new queries over all cached keys (grouped-query)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, T, D]; k, v [B, KV, S, D] with the T queries being the last T of S."""
        t, s = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]  # SDPA shares each KV head with its query group, no copies
        if t == 1:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        if t == s:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads, config.num_kv_heads, config.head_dim)
        self.q_proj = nn.Linear(h, config.q_dim, bias=False)
        self.k_proj = nn.Linear(h, config.kv_dim, bias=False)
        self.v_proj = nn.Linear(h, config.kv_dim, bias=False)
        self.o_proj = nn.Linear(config.q_dim, h, bias=False)
        self.core = DenseAttention()

    def forward(self, x, cos, sin, cache=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if getattr(cache, "rotates_keys", False):
            # the cache places RoPE itself (e.g. by slot order, StreamingLLM) and attends
            out = cache.attend(q, k, v)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)
        out = self.core(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)


class LlamaModel(nn.Module):
    """Decoder-only LLaMA: token ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> "LlamaModel":
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(weights, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.model.rotary = RotaryEmbedding(config)
        leftover = [n for n, p in model.named_parameters() if p.is_meta]
        if leftover:
            raise ValueError(f"weights missing for {leftover[:3]}")
        return model.eval()

    @classmethod
    def from_checkpoint(cls, checkpoint) -> "LlamaModel":
        return cls.from_weights(checkpoint.config, checkpoint.weights)

    def new_cache(self, factory=None) -> ModelCache:
        """Per-layer caches from `factory`, else from `self.cache_factory` if one was set
        (e.g. by `enable_lambda_attention`), else dense float caches."""
        factory = factory or getattr(self, "cache_factory", None)
        if factory is None:
            return ModelCache(self.config.num_layers)
        return ModelCache(self.config.num_layers, factory)

    def hidden_states(self, input_ids: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, hidden]; advances `cache` if one is given."""
        start = cache.position if cache is not None else 0
        b, t = input_ids.shape
        positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        cos, sin = self.model.rotary(positions)
        x = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.position += t
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, cache))


def projection_parent(block: DecoderLayer, name: str) -> nn.Module:
    """The submodule (self_attn or mlp) of decoder layer `block` that holds projection `name`."""
    if name not in LINEAR_NAMES:
        raise ValueError(f"unknown projection {name!r}; one of {', '.join(LINEAR_NAMES)}")
    return block.self_attn if name in ATTENTION_PROJECTIONS else block.mlp


def projection(block: DecoderLayer, name: str) -> nn.Module:
    """Projection `name` (q_proj ... down_proj) of decoder layer `block`."""
    return getattr(projection_parent(block, name), name)


def replace_linear(model: LlamaModel, layer: int, name: str, module: nn.Module) -> None:
    """Swap projection `name` (q_proj ... down_proj) of decoder layer `layer` for `module`."""
    setattr(projection_parent(model.model.layers[layer], name), name, module)


def iter_linears(model: LlamaModel):
    """(layer index, projection name, module) for every decoder projection."""
    for i, block in enumerate(model.model.layers):
        for name in LINEAR_NAMES:
            yield i, name, projection(block, name)
