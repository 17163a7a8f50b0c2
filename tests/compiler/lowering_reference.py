"""Run a compressed torch model and the lowered cascades on the same tokens, for comparison.

The torch side runs as `llmfab eval/generate` do (the recipe's KV4 cache and Λ attention via
`apply_kv_and_attention`) and records, per layer, the keys and values attention actually used
(as stored by the cache). The interpreter side chains embedding -> layers -> head, feeding each
layer the cache contents torch attended to (the cascade's one external edge, see
compiler/lowering.py); everything else is computed by the cascades.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

import llmfab.quant.lambda_attention as lambda_module
from llmfab.compiler import lowering_inputs as inputs
from llmfab.compiler.interpreter import run
from llmfab.compiler.lowering import LoweringOptions, lower_embedding, lower_head, lower_layer
from llmfab.quant.recipe_runtime import apply_kv_and_attention


@dataclass(frozen=True)
class TorchRun:
    logits: torch.Tensor  # [P, V] of the step
    layer_inputs: tuple[torch.Tensor, ...]  # [P, H] per layer
    caches: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # keys, values [KV, keys, D] as attended
    new_values: tuple[torch.Tensor, ...]  # v_proj outputs [P, kv_dim]


class _Recorder:
    def __init__(self, core):
        self.core, self.calls = core, []

    def __call__(self, q, k, v):
        self.calls.append((k[0].detach().clone(), v[0].detach().clone()))
        return self.core(q, k, v)


@contextmanager
def _recording_lambda(calls: list, window: int):
    original = lambda_module.lambda_attention

    def recorder(q, q_start, sink_k, sink_v, win_k, win_v, win_start, *args, **kwargs):
        last = q_start + q.shape[2] - 1
        lo = win_start if q.shape[2] > 1 else max(win_start, last - window + 1)
        keys = torch.cat([sink_k[0], win_k[0][:, lo - win_start:]], dim=1).float()
        values = torch.cat([sink_v[0], win_v[0][:, lo - win_start:]], dim=1).float()
        calls.append((keys, values))
        return original(q, q_start, sink_k, sink_v, win_k, win_v, win_start, *args, **kwargs)

    lambda_module.lambda_attention = recorder
    try:
        yield
    finally:
        lambda_module.lambda_attention = original


@torch.no_grad()
def torch_run(model, recipe, prompt: list[int], step: list[int] | None) -> TorchRun:
    """Prefill `prompt` (recorded if `step` is None), else prefill it and record decoding `step`."""
    apply_kv_and_attention(model, recipe)
    cache = model.new_cache()
    if step is not None:
        model(torch.tensor([prompt]), cache)
    ids = torch.tensor([step if step is not None else prompt])
    layer_inputs, new_values, calls, hooks = [], [], [], []
    for layer in model.model.layers:
        hooks.append(layer.register_forward_pre_hook(lambda m, a: layer_inputs.append(a[0][0].clone())))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(lambda m, a, o: new_values.append(o[0].clone())))
    cores = []
    if not recipe.lambda_attention:
        for layer in model.model.layers:
            cores.append(layer.self_attn.core)
            layer.self_attn.core = _Recorder(layer.self_attn.core)
    try:
        with _recording_lambda(calls, recipe.window or 1):
            logits = model(ids, cache)[0]
    finally:
        for hook in hooks:
            hook.remove()
        for layer, core in zip(model.model.layers, cores):
            calls.append(layer.self_attn.core.calls[0])
            layer.self_attn.core = core
    return TorchRun(logits, tuple(layer_inputs), tuple(calls), tuple(new_values))


@dataclass(frozen=True)
class CascadeRun:
    logits: torch.Tensor  # [P, V] float64
    layer_outputs: tuple[torch.Tensor, ...]
    new_values: tuple[torch.Tensor, ...]  # VNEW as [P, kv_dim]


def cascade_run(model, recipe, reference: TorchRun, tokens: list[int], options: LoweringOptions,
                layers: range | None = None, teacher_forced: bool = False) -> CascadeRun:
    """Run embedding, `layers` (default all) and head in the interpreter; a subset of layers
    starts from torch's input of the first one. `teacher_forced`: every layer gets torch's input."""
    layers = layers if layers is not None else range(model.config.num_layers)
    count = len(tokens)
    if layers.start == 0:
        embedding = lower_embedding(model, count)
        x = run(embedding.cascade, inputs.embedding_inputs(model, embedding, tokens))["X"]
    else:
        x = inputs.hidden(reference.layer_inputs[layers.start])
    outputs, values = [], []
    for index in layers:
        if teacher_forced:
            x = inputs.hidden(reference.layer_inputs[index])
        lowered = lower_layer(model, recipe, index, options)
        keys, vals = reference.caches[index]
        feed = {"X": x, **inputs.layer_weights(model, lowered), **inputs.positions(model, lowered),
                **inputs.cache(lowered, keys, vals)}
        result = run(lowered.cascade, feed)
        x = result["Y"]
        outputs.append(inputs.from_hidden(x))
        values.append(torch.from_numpy(result["VNEW"].transpose(2, 0, 1).reshape(count, -1).copy()))
    head = lower_head(model, count)
    logits = run(head.cascade, {"X": x, **inputs.head_inputs(model, head)})["LOGITS"]
    return CascadeRun(inputs.from_hidden(logits), tuple(outputs), tuple(values))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())
