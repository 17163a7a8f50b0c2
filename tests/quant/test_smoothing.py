"""SmoothQuant smoothing folded into the weights: function kept, outliers flattened, GQA sharing, recipe."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llmfab.cli import main
from llmfab.errors import InputError
from llmfab.quant.artifact import load_artifact
from llmfab.quant.calibrate import calibration_windows
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.model import LlamaModel
from llmfab.quant.recipe import Recipe
from llmfab.quant.smoothing import collect_input_maxima, smooth_model, smoothing_factors
from llmfab.tests.quant.tiny_quantized import FAST_CALIBRATION, quantized_tiny, tiny_recipe


@pytest.fixture(scope="module")
def tiny(tiny_hf_folder):
    """(checkpoint, calibration windows [2, 32]) of the tiny GQA model."""
    checkpoint = load_checkpoint(str(tiny_hf_folder), use_cache=False)
    return checkpoint, calibration_windows(checkpoint.tokenizer, tiny_recipe("w8a8kv8"))


def _max_to_median(maxima: torch.Tensor) -> float:
    """How far the largest channel maximum sticks out: max / median over channels."""
    return (maxima.max() / maxima.median()).item()


def test_smoothing_keeps_the_float_function(tiny):
    checkpoint, windows = tiny
    reference, smoothed = LlamaModel.from_checkpoint(checkpoint), LlamaModel.from_checkpoint(checkpoint)
    smooth_model(smoothed, windows, alpha=0.5)
    ids = torch.randint(0, checkpoint.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(smoothed(ids), reference(ids), atol=1e-4, rtol=0)
        changed = smoothed.model.layers[0].self_attn.v_proj.weight
        assert not torch.allclose(changed, reference.model.layers[0].self_attn.v_proj.weight)


def test_smoothing_does_not_write_into_the_checkpoint_weights(tiny):
    checkpoint, windows = tiny
    before = {name: weight.clone() for name, weight in checkpoint.weights.items()}
    smooth_model(LlamaModel.from_checkpoint(checkpoint), windows, alpha=0.5)
    assert all(torch.equal(checkpoint.weights[name], weight) for name, weight in before.items())


def test_factors_flatten_the_activation_outliers(tiny):
    checkpoint, windows = tiny
    model = LlamaModel.from_checkpoint(checkpoint)
    before = collect_input_maxima(model, windows)
    factors = smooth_model(model, windows, alpha=0.5)
    after = collect_input_maxima(model, windows)
    for layer_before, layer_after, layer_factors in zip(before, after, factors):
        for field in ("attention", "mlp", "mlp_hidden"):
            old, new = getattr(layer_before, field), getattr(layer_after, field)
            assert torch.allclose(new, old / getattr(layer_factors, field), rtol=1e-4, atol=1e-6)
            assert _max_to_median(new) < _max_to_median(old)


def test_factor_formula_balances_activation_and_weight_maxima():
    activation, weight = torch.tensor([8.0, 1.0, 0.0]), torch.tensor([0.5, 2.0, 1.0])
    factors = smoothing_factors(activation, weight, alpha=0.5)
    assert torch.allclose(factors[:2], torch.tensor([8.0 ** 0.5 / 0.5 ** 0.5, 1.0 / 2.0 ** 0.5]))
    assert torch.allclose(activation[:2] / factors[:2], weight[:2] * factors[:2])  # α = ½: equal maxima
    assert torch.isfinite(factors).all() and factors[2] > 0  # a silent channel still gets a finite factor


def test_value_factors_are_shared_by_the_query_heads_of_a_kv_group(tiny):
    checkpoint, windows = tiny
    config = checkpoint.config
    assert config.num_heads > config.num_kv_heads  # the fixture is grouped-query
    reference, smoothed = LlamaModel.from_checkpoint(checkpoint), LlamaModel.from_checkpoint(checkpoint)
    factors = smooth_model(smoothed, windows, alpha=0.6)
    group = config.num_heads // config.num_kv_heads
    for ref_layer, layer, layer_factors in zip(reference.model.layers, smoothed.model.layers, factors):
        per_kv = layer_factors.attention_output
        assert per_kv.shape == (config.num_kv_heads, config.head_dim)
        # v: rows / s_v (this fold) and columns × s (the input_layernorm fold)
        v_ratio = ref_layer.self_attn.v_proj.weight / layer.self_attn.v_proj.weight * layer_factors.attention
        assert torch.allclose(v_ratio, per_kv.reshape(-1, 1).expand_as(v_ratio), rtol=1e-4)
        o_ratio = (layer.self_attn.o_proj.weight / ref_layer.self_attn.o_proj.weight)[0]  # columns × s
        for head in range(config.num_heads):
            head_columns = o_ratio[head * config.head_dim : (head + 1) * config.head_dim]
            assert torch.allclose(head_columns, per_kv[head // group], rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5])
def test_recipe_rejects_alpha_outside_the_open_unit_interval(alpha):
    with pytest.raises(InputError, match="--smooth-alpha must be between 0 and 1"):
        Recipe.from_preset("w8a8kv8", smooth_alpha=alpha)


def test_measured_presets_smooth_and_the_2_bit_ones_do_not():
    assert Recipe.from_preset("w8a8kv8").smooth_alpha == Recipe.from_preset("w4a8kv4").smooth_alpha == 0.7
    assert Recipe.from_preset("w2a8kv4").smooth_alpha is None and Recipe.from_preset("accllm").smooth_alpha is None


def test_recipe_round_trips_alpha_and_old_manifests_mean_off():
    recipe = Recipe.from_preset("w4a8kv4", smooth_alpha=0.5)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    without = {k: v for k, v in recipe.to_dict().items() if k != "smooth_alpha"}
    assert Recipe.from_dict(without).smooth_alpha is None


def test_smoothed_quantization_keeps_a8_error_no_larger(tiny_hf_folder):
    """On the tiny model (random weights, few outliers) smoothing must at least not hurt W8A8 much."""
    unsmoothed = dataclasses.replace(tiny_recipe("w8a8kv8"), smooth_alpha=None)
    _, reference, plain, windows = quantized_tiny(tiny_hf_folder, unsmoothed)
    *_, smoothed, _ = quantized_tiny(tiny_hf_folder, tiny_recipe("w8a8kv8", smooth_alpha=0.5))
    with torch.no_grad():
        target = reference(windows)
        plain_error = (plain(windows) - target).pow(2).mean()
        smoothed_error = (smoothed(windows) - target).pow(2).mean()
    assert smoothed_error < 1.5 * plain_error


def test_cli_option_reaches_the_manifest(tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "smoothed"
    fast = ["--calib-samples", str(FAST_CALIBRATION["calib_samples"]),
            "--calib-seq-len", str(FAST_CALIBRATION["calib_seq_len"])]
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w8a8kv8", "-o", str(out), *fast,
                 "--smooth-alpha", "0.5"]) == 0
    assert json.loads((out / "manifest.json").read_text())["recipe"]["smooth_alpha"] == 0.5
    stored_gain = load_artifact(out).model.model.layers[0].input_layernorm.weight
    float_gain = load_checkpoint(str(tiny_hf_folder), use_cache=False).weights["model.layers.0.input_layernorm.weight"]
    assert not torch.allclose(stored_gain, float_gain.float())  # the folded gains are what is saved
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w4a8kv4", "-o", str(tmp_path / "off"), *fast,
                 "--smooth-alpha", "off"]) == 0
    assert json.loads((tmp_path / "off" / "manifest.json").read_text())["recipe"]["smooth_alpha"] is None
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w8a8kv8", "-o", str(tmp_path / "bad"),
                 "--smooth-alpha", "1"]) == 2
    assert "--smooth-alpha must be between 0 and 1" in capsys.readouterr().err
