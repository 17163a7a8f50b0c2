"""SmoothQuant-style smoothing folded into the float weights, so the engine pays nothing at run time.

Per-token A8 loses precision when a few input channels of a projection are much larger than the
rest: one scale per token serves every channel. Smoothing divides each input channel j by a factor
``s_j = max|X_j|^α / max|W_j|^(1−α)`` (activation maximum over the calibration windows, weight
maximum over the columns of every projection that reads the channel) and multiplies the weight
columns by ``s_j``, moving the difficulty from activations to weights. The division is folded into
whatever produces the channel, so the float model computes the same function:

* q/k/v inputs (``input_layernorm`` output): the RMSNorm gain is divided by s, q/k/v columns × s;
* gate/up inputs (``post_attention_layernorm`` output): the same with that norm;
* down_proj input ``silu(gate) * up``: up_proj's output rows / s, down_proj columns × s;
* o_proj input (attention output): v_proj's output rows / s, o_proj columns × s. Softmax weights
  mix values linearly, so this is exact; with grouped-query attention every query head reads its
  kv head's values, so the factor is per kv channel ``[kv_heads, head_dim]`` and o_proj's columns
  of query head h use the factors of kv head ``h // (num_heads / num_kv_heads)``.

The LM head's input (final norm) is not smoothed: its weight is the tied embedding table.
A quantized KV cache stores v after smoothing, so its per-token value scales see the divided
channels (keys are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmfab.errors import InputError
from llmfab.quant.model import DecoderLayer, LlamaModel

WINDOWS_PER_BATCH = 8
SMALLEST_MAXIMUM = 1e-5  # keeps factors finite for channels that are never (or always zero) used


@dataclass
class InputMaxima:
    """Per-channel max |x| of one decoder layer's projection inputs over the calibration windows.

    ``attention`` ``[hidden]`` (q/k/v input), ``mlp`` ``[hidden]`` (gate/up input),
    ``attention_output`` ``[num_heads * head_dim]`` (o_proj input), ``mlp_hidden``
    ``[intermediate]`` (down_proj input); all float32.
    """

    attention: torch.Tensor
    mlp: torch.Tensor
    attention_output: torch.Tensor
    mlp_hidden: torch.Tensor


@dataclass
class LayerFactors:
    """The smoothing factors folded into one decoder layer (shapes as in :class:`InputMaxima`,
    except ``attention_output`` ``[num_kv_heads, head_dim]``: shared by a kv group's query heads)."""

    attention: torch.Tensor
    mlp: torch.Tensor
    attention_output: torch.Tensor
    mlp_hidden: torch.Tensor


def check_alpha(alpha: float) -> None:
    """Raise InputError unless 0 < ``alpha`` < 1 (the migration strength of SmoothQuant)."""
    if not 0 < alpha < 1:
        raise InputError(f"--smooth-alpha must be between 0 and 1 (exclusive), got {alpha}; 0.5 is typical")


_OBSERVED = {  # InputMaxima field -> the projection whose input it is
    "attention": ("self_attn", "q_proj"),
    "mlp": ("mlp", "gate_proj"),
    "attention_output": ("self_attn", "o_proj"),
    "mlp_hidden": ("mlp", "down_proj"),
}


@torch.no_grad()
def collect_input_maxima(model: LlamaModel, windows: torch.Tensor) -> list[InputMaxima]:
    """Run ``model`` over token ``windows`` ``[N, T]`` and return every layer's input maxima."""
    running: list[dict[str, torch.Tensor]] = [{} for _ in model.model.layers]

    def observe(layer: int, field: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            seen = running[layer].get(field)
            running[layer][field] = x if seen is None else torch.maximum(seen, x)
        return hook

    handles = [
        getattr(getattr(layer, parent), name).register_forward_hook(observe(i, field))
        for i, layer in enumerate(model.model.layers)
        for field, (parent, name) in _OBSERVED.items()
    ]
    try:
        for start in range(0, windows.shape[0], WINDOWS_PER_BATCH):
            model.hidden_states(windows[start : start + WINDOWS_PER_BATCH])
    finally:
        for handle in handles:
            handle.remove()
    return [InputMaxima(**maxima) for maxima in running]


def smoothing_factors(activation_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|X|^α / max|W|^(1−α)`` per channel; both maxima and the result have one shape."""
    activation_max = activation_max.float().clamp(min=SMALLEST_MAXIMUM)
    weight_max = weight_max.float().clamp(min=SMALLEST_MAXIMUM)
    return activation_max.pow(alpha) / weight_max.pow(1 - alpha)


def _column_max(*weights: torch.Tensor) -> torch.Tensor:
    """Max |w| of every input column over all ``weights`` ``[out_k, in]`` -> ``[in]``."""
    return torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0)


@torch.no_grad()
def smooth_layer(layer: DecoderLayer, maxima: InputMaxima, alpha: float) -> LayerFactors:
    """Fold smoothing factors into ``layer``'s norms and float projection weights, in place."""
    attn, mlp = layer.self_attn, layer.mlp
    factors = LayerFactors(
        attention=smoothing_factors(maxima.attention, _column_max(
            attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight), alpha),
        mlp=smoothing_factors(maxima.mlp, _column_max(mlp.gate_proj.weight, mlp.up_proj.weight), alpha),
        attention_output=_value_factors(attn, maxima.attention_output, alpha),
        mlp_hidden=smoothing_factors(maxima.mlp_hidden, _column_max(mlp.down_proj.weight), alpha),
    )
    _fold_into_norm(layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj), factors.attention)
    _fold_into_norm(layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj), factors.mlp)
    per_query_channel = factors.attention_output.repeat_interleave(
        attn.num_heads // attn.num_kv_heads, dim=0).reshape(-1)
    _fold_into_rows(attn.v_proj, attn.o_proj, factors.attention_output.reshape(-1), per_query_channel)
    _fold_into_rows(mlp.up_proj, mlp.down_proj, factors.mlp_hidden, factors.mlp_hidden)
    return factors


def smooth_model(model: LlamaModel, windows: torch.Tensor, alpha: float) -> list[LayerFactors]:
    """Collect input maxima of the float ``model`` over ``windows`` ``[N, T]`` and smooth every
    decoder layer in place; returns the factors folded in, one entry per layer."""
    check_alpha(alpha)
    maxima = collect_input_maxima(model, windows)
    return [smooth_layer(layer, layer_maxima, alpha) for layer, layer_maxima in zip(model.model.layers, maxima)]


def _value_factors(attn, output_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """Factors ``[num_kv_heads, head_dim]`` for o_proj's input, shared by each kv group's query heads.

    ``output_max`` ``[num_heads * head_dim]``; the activation and o_proj column maxima are taken
    over the query heads of a group, which all carry (mixtures of) the same v channel.
    """
    kv, group, dim = attn.num_kv_heads, attn.num_heads // attn.num_kv_heads, attn.head_dim
    activation = output_max.reshape(kv, group, dim).amax(dim=1)
    weight = attn.o_proj.weight.detach().abs().reshape(-1, kv, group, dim).amax(dim=(0, 2))
    return smoothing_factors(activation, weight, alpha)


def _fold_into_norm(norm, consumers, factors: torch.Tensor) -> None:
    """norm gain ``[in]`` / s; every consumer's weight ``[out, in]`` columns × s."""
    _replace_weight(norm, norm.weight / factors)
    for linear in consumers:
        _replace_weight(linear, linear.weight * factors)


def _fold_into_rows(producer, consumer, producer_factors: torch.Tensor, consumer_factors: torch.Tensor) -> None:
    """producer's output rows ``[out, in]`` / s; consumer's matching input columns × s."""
    _replace_weight(producer, producer.weight / producer_factors.unsqueeze(1))
    _replace_weight(consumer, consumer.weight * consumer_factors)


def _replace_weight(module, value: torch.Tensor) -> None:
    """Give ``module`` a new weight tensor rather than writing into the old one, which may be
    shared with the checkpoint (or memory-mapped from the float cache)."""
    old = module.weight
    module.weight = torch.nn.Parameter(value.detach().to(old.dtype), requires_grad=old.requires_grad)
