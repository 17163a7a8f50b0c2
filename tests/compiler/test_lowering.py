"""Lowering of the compressed tiny model: the interpreter reproduces the fake-quant logits.

Tolerance. The interpreter computes in float64, torch in float32: without A8 code differences
the logits agree to ~1e-6 of their largest magnitude (measured 1e-7 .. 4e-7). The A8
requantization rounds x / scale to an integer; where that quotient lies within float32 rounding
of a half-integer (a tie), float32 and float64 may round to neighbouring codes. One such flip
moves one activation by one step (max|x| / 127) and was measured to move the tiny model's logits
by 1.5e-4 of their maximum. So the tests allow 1e-3 of the largest logit (a few flips) and require
the same argmax, and a separate test checks that every code difference is such a tie.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmfab.compiler import lowering_inputs as inputs
from llmfab.compiler.interpreter import run, run_with_presence
from llmfab.compiler.ir import FilterShape, filter_shape
from llmfab.compiler.lowering import LoweringOptions, Phase, lower_layer
from llmfab.compiler.lowering_attention import Softmax
from llmfab.compiler.lowering_linear import RankDim, group_input
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.passes import analyze_passes
from llmfab.compiler.printer import print_cascade
from llmfab.quant.artifact import load_artifact, save_artifact
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.tests.compiler.lowering_reference import cascade_run, relative_error, torch_run
from llmfab.tests.quant.tiny_quantized import quantized_tiny, tiny_recipe

TOLERANCE = 1e-3
PROMPT = [5, 17, 40, 3, 99, 120, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 200, 201, 202, 30]  # 20 > S + W
STEP = [77]


@pytest.fixture(scope="module")
def lambda_artifact(tiny_hf_folder, tmp_path_factory):
    """accllm (W2 2:4, A8, KV4, Λ) with group 32 and 4 sinks + 8 window slots, through an artifact."""
    recipe = tiny_recipe("accllm", group_size=32, window=8)
    _, _, model, _ = quantized_tiny(tiny_hf_folder, recipe)
    folder = tmp_path_factory.mktemp("lowering") / "accllm"
    save_artifact(folder, model, recipe, load_checkpoint(str(tiny_hf_folder), use_cache=False).tokenizer)
    return load_artifact(folder)


@pytest.fixture(scope="module")
def dense_model(tiny_hf_folder):
    """w4a8kv4: W4 group 64, A8, KV4 (per-channel keys, per-token values), dense attention."""
    recipe = tiny_recipe("w4a8kv4")
    return quantized_tiny(tiny_hf_folder, recipe)[2], recipe


def _compare(model, recipe, phase: Phase, softmax: Softmax):
    step = None if phase is Phase.PREFILL else STEP
    reference = torch_run(model, recipe, PROMPT, step)
    options = LoweringOptions(phase, len(PROMPT), softmax, block=4)
    got = cascade_run(model, recipe, reference, step or PROMPT, options)
    assert relative_error(got.logits, reference.logits) < TOLERANCE
    assert torch.equal(got.logits.argmax(-1), reference.logits.argmax(-1))
    assert relative_error(got.new_values[0], reference.new_values[0]) < TOLERANCE


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("softmax", list(Softmax))
def test_lambda_kv4_model_matches_torch(lambda_artifact, phase, softmax):
    _compare(lambda_artifact.model, lambda_artifact.recipe, phase, softmax)


@pytest.mark.parametrize("phase", list(Phase))
def test_dense_kv4_model_matches_torch(dense_model, phase):
    _compare(*dense_model, phase, Softmax.ONE_PASS)


def test_a8_code_differences_are_rounding_ties(dense_model):
    """Every int8 code the interpreter computes equals torch's, except at x / scale ≈ k + 0.5."""
    model, recipe = dense_model
    seen = {}
    block = model.model.layers[0]
    modules = {"XC": block.self_attn.q_proj, "HC": block.mlp.gate_proj, "SC": block.mlp.down_proj}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0][0].float()))
             for n, m in modules.items()]
    reference = torch_run(model, recipe, PROMPT, None)
    for hook in hooks:
        hook.remove()
    lowered = lower_layer(model, recipe, 0, LoweringOptions(Phase.PREFILL, len(PROMPT)))
    keys, values = reference.caches[0]
    result = run(lowered.cascade, {"X": inputs.hidden(reference.layer_inputs[0]), **inputs.layer_weights(model, lowered),
                                   **inputs.positions(model, lowered), **inputs.cache(lowered, keys, values)})
    for name, x in seen.items():
        quotient = (x / (x.abs().amax(-1, keepdim=True) / 127)).double().numpy().T
        differs = np.rint(quotient) != result[name]
        assert np.all(np.abs(np.abs(quotient[differs] - np.floor(quotient[differs])) - 0.5) < 1e-4)


def test_lambda_prefill_scores_are_exactly_the_lambda_band(lambda_artifact):
    """Scores exist only for sinks and the window (a rank filter, no mask tensor), so the T×T
    score tensor is sparse in the Λ shape; no input tensor spans keys × queries."""
    model, recipe = lambda_artifact.model, lambda_artifact.recipe
    reference = torch_run(model, recipe, PROMPT, None)
    lowered = lower_layer(model, recipe, 0, LoweringOptions(Phase.PREFILL, len(PROMPT), Softmax.THREE_PASS))
    keys, values = reference.caches[0]
    result = run_with_presence(lowered.cascade, {
        "X": inputs.hidden(reference.layer_inputs[0]), **inputs.layer_weights(model, lowered),
        **inputs.positions(model, lowered), **inputs.cache(lowered, keys, values)})
    present = result["QK"].present  # [G, R, M, P]
    m, p = np.meshgrid(range(len(PROMPT)), range(len(PROMPT)), indexing="ij")
    band = (m < recipe.sinks) & (m <= p) | ((p - recipe.window < m) & (m <= p))
    assert np.array_equal(present, np.broadcast_to(band, present.shape))
    cascade = lowered.cascade
    for name in cascade.inputs():
        assert not {"M", "P"} <= set(cascade.tensor(name).rank_names), name


def test_decode_step_filter_is_lambda_and_formats_are_annotated(lambda_artifact):
    model, recipe = lambda_artifact.model, lambda_artifact.recipe
    lowered = lower_layer(model, recipe, 1, LoweringOptions(Phase.DECODE, 30, Softmax.THREE_PASS))
    cascade = lowered.cascade
    assert cascade.rank("M").size == recipe.sinks + recipe.window
    score = next(e for e, _ in cascade.einsums() if e.output.tensor == "QK")
    assert filter_shape(score.where) is FilterShape.LAMBDA
    spelled = {t.name: t.format.spelling() for t in cascade.tensors}
    assert spelled["XC"] == "int8(scale=token)"
    assert spelled["WQC"] == "weight2(group=32, sparse=2:4, zero=asym)"
    assert spelled["WQM"] == "index3(sparse=2:4)"
    assert spelled["WQS"] == "float16"
    assert spelled["KC"] == "kv4(group=8, scale=channel)"
    assert spelled["VC"] == "kv4(scale=token)"
    assert spelled["QG"] == "int32"
    assert parse_cascade(print_cascade(cascade)) == cascade


@pytest.mark.parametrize("softmax,passes", [(Softmax.ONE_PASS, 1), (Softmax.THREE_PASS, 3)])
def test_attention_pass_counts_over_keys(lambda_artifact, softmax, passes):
    lowered = lower_layer(lambda_artifact.model, lambda_artifact.recipe, 0,
                          LoweringOptions(Phase.DECODE, 30, softmax, block=4))
    assert analyze_passes(lowered.cascade, "M").passes == passes


def test_group_input_splits_the_rank_that_crosses_the_group():
    heads = (RankDim("G", 3), RankDim("R", 3), RankDim("F", 64))
    smollm = group_input(heads, 64)
    assert [d.name for d in smollm.group] == ["G", "R"] and [d.name for d in smollm.within] == ["F"]
    split = group_input((RankDim("H", 576),), 64)
    assert [(d.name, d.size) for d in split.group + split.within] == [("HG", 9), ("HJ", 64)]
    assert split.read("H") == "64*hg + hj"
    tiny = group_input((RankDim("G", 2), RankDim("R", 2), RankDim("F", 16)), 64)
    assert tiny.group == () and [d.name for d in tiny.within] == ["G", "R", "F"]


def test_cli_compile_emits_one_layer(lambda_artifact, capsys):
    from llmfab.cli import main

    folder = str(lambda_artifact.folder)
    assert main(["compile", folder, "--emit-ir", "--layer", "1", "--phase", "decode", "--tokens", "20"]) == 0
    text = capsys.readouterr().out
    cascade = parse_cascade(text)
    assert "Y" in cascade.outputs() and cascade.rank("M1").size * cascade.rank("M0").size == 12
    assert "where m0 + 6*m1 < 4 or p + 3 < m0 + 6*m1 <= p + 11" in text
    assert main(["compile", folder, "--emit-ir", "--phase", "prefill", "--tokens", "6", "--softmax", "3pass"]) == 0
    assert "QK[g, r, m, p] = QR[g, r, eh, ei, p] * KR[g, eh, ei, m]" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    ([], "say where to write the program with -o PROGRAM"),
    (["--emit-ir", "--layer", "7"], "--layer 7 does not exist"),
    (["--emit-ir", "--tokens", "0", "--phase", "prefill"], "--tokens 0"),
])
def test_cli_compile_errors(lambda_artifact, capsys, args, message):
    from llmfab.cli import main

    assert main(["compile", str(lambda_artifact.folder), *args]) == 2
    assert message in capsys.readouterr().err
