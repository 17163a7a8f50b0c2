"""The lowered SmolLM2-135M decode step agrees with the compressed torch model on real tokens.

accllm recipe (W2 2:4 group 64, A8, KV4 per-channel keys / per-token values, Λ) with 4 sinks and
a 32-token window. To stay within minutes on two cores the weights are quantized by rounding to
nearest (min-max group scales, magnitude 2:4 masks, 8-bit per-row embeddings) instead of
SparseGPT calibration: the lowering and its check do not depend on how the codes were chosen.
64 tokens of persuasion.txt are prefilled by torch, then one decode step runs through the
embedding, all 30 lowered layers and the LM head in the interpreter, every layer fed the input
torch gave that layer (teacher forcing). Chaining the layers instead is not a test of the
lowering: float64 and float32 differ by ~1e-7, which flips the odd A8 code sitting near a
rounding boundary, and per-token A8 amplifies such a flip through 30 layers (the chained logits
have differed from torch's by 7e-7 and by 4e-2 of the largest logit depending on torch's float
summation order; docs/numerics.md §12 measures the same chaos). Tolerance as in test_lowering.py:
1e-3 of the largest value per layer output and for the logits, same argmax.
"""

from __future__ import annotations

import time

import pytest
import torch

from llmfab.compiler.lowering import LoweringOptions, Phase
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.model import LlamaModel, iter_linears, replace_linear
from llmfab.quant.perplexity import read_text
from llmfab.quant.qlinear import QuantLinear, quantize_embeddings
from llmfab.quant.recipe import Recipe
from llmfab.quant.sparsity import magnitude_2to4_mask
from llmfab.quant.weight_quant import GroupQuantConfig, ScaleInit, quantize_groupwise
from llmfab.tests.compiler.lowering_reference import cascade_run, relative_error, torch_run

pytestmark = pytest.mark.slow
PROMPT_TOKENS = 64


def rtn_quantized(model: LlamaModel, recipe: Recipe) -> LlamaModel:
    """Round-to-nearest version of the recipe's weight format (no calibration)."""
    config = GroupQuantConfig(bits=recipe.weight_bits, group_size=recipe.group_size, init=ScaleInit.MINMAX)
    for layer, name, module in list(iter_linears(model)):
        weight = module.weight.detach().float()
        mask = magnitude_2to4_mask(weight) if recipe.sparse else None
        replace_linear(model, layer, name, QuantLinear(quantize_groupwise(weight, config, mask=mask), recipe.act_bits))
    quantize_embeddings(model, recipe.act_bits)
    return model.eval()


def test_smollm2_decode_step_matches_torch():
    checkpoint = load_checkpoint("smollm2-135m")
    recipe = Recipe.from_preset("accllm", window=32)
    model = rtn_quantized(LlamaModel.from_checkpoint(checkpoint), recipe)
    tokens = checkpoint.tokenizer.encode(read_text(None)[1])[: PROMPT_TOKENS + 1]
    prompt, step = tokens[:-1], tokens[-1:]
    reference = torch_run(model, recipe, prompt, step)
    start = time.time()
    got = cascade_run(model, recipe, reference, step, LoweringOptions(Phase.DECODE, len(prompt)),
                      teacher_forced=True)
    layer_errors = [relative_error(out, want) for out, want in zip(got.layer_outputs, reference.layer_inputs[1:])]
    error = relative_error(got.logits, reference.logits)
    print(f"\nSmolLM2 accllm (RTN) decode step after {len(prompt)} tokens, 30 layers: worst layer output "
          f"{max(layer_errors):.2e}, max |Δlogit| / max |logit| = {error:.2e}, interpreter {time.time() - start:.0f} s")
    assert len(layer_errors) == model.config.num_layers - 1
    assert max(layer_errors) < 1e-3, layer_errors
    assert error < 1e-3
    assert torch.equal(got.logits.argmax(-1), reference.logits.argmax(-1))
