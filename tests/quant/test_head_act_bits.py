"""The LM head's input width (recipe head_act_bits): checked, applied by quantization, kept by the
artifact (tied and untied heads), reachable from the CLI."""

from __future__ import annotations

import pytest
import torch

from llmfab.cli import main
from llmfab.errors import InputError
from llmfab.quant.artifact import load_artifact, save_artifact
from llmfab.quant.recipe import Recipe
from llmfab.tests.fixtures.tiny_models import TINY_CONFIGS, write_tiny_hf_folder
from llmfab.tests.quant.tiny_quantized import FAST_CALIBRATION, quantized_tiny, tiny_recipe


def test_head_input_bits_follow_act_bits_unless_set():
    assert Recipe.from_preset("w4a8kv4").head_input_bits == 8
    assert Recipe.from_preset("w4a8kv4", head_act_bits=16).head_input_bits is None
    assert Recipe.from_preset("w4a8kv4", act_bits=16).head_input_bits is None
    assert Recipe.from_preset("w4a8kv4", act_bits=16, head_act_bits=8).head_input_bits == 8
    with pytest.raises(InputError, match="--head-act-bits 4: LM-head input bits must be one of 8, 16"):
        Recipe.from_preset("w4a8kv4", head_act_bits=4)


@pytest.mark.parametrize("config", ["gqa-llama3", "mha-tied"])  # untied and tied LM head
def test_a16_head_is_applied_saved_and_loaded(config, tiny_hf_folder, tmp_path):
    folder = tiny_hf_folder if config == "gqa-llama3" else write_tiny_hf_folder(tmp_path / "tied", TINY_CONFIGS[config])
    recipe = tiny_recipe("w4a8kv4", group_size=32, head_act_bits=16)
    checkpoint, _, model, windows = quantized_tiny(folder, recipe)
    assert model.lm_head.act_bits is None and model.model.layers[0].mlp.down_proj.act_bits == 8
    save_artifact(tmp_path / "out", model, recipe, checkpoint.tokenizer)
    artifact = load_artifact(tmp_path / "out")
    assert artifact.recipe.head_act_bits == 16 and artifact.model.lm_head.act_bits is None
    with torch.no_grad():
        a16 = artifact.model(windows[:1])
        assert torch.equal(a16, model(windows[:1]))
        artifact.model.lm_head.act_bits = 8
        assert not torch.equal(a16, artifact.model(windows[:1]))  # the option changes the head's input


def test_cli_option_reaches_the_recipe(tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "a16"
    fast = ["--calib-samples", str(FAST_CALIBRATION["calib_samples"]),
            "--calib-seq-len", str(FAST_CALIBRATION["calib_seq_len"])]
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w4a8kv4", "--head-act-bits", "16",
                 "-o", str(out), *fast]) == 0
    assert load_artifact(out).recipe.head_act_bits == 16


def test_head_width_does_not_change_the_stored_tensors(tiny_hf_folder):
    """The head's input width acts only at run time (the head is not calibrated), so re-saving an
    artifact with another head_act_bits is the same as quantizing again."""
    tensors = []
    for head_act_bits in (8, 16):
        _, _, model, _ = quantized_tiny(tiny_hf_folder, tiny_recipe("w4a8kv4", group_size=32, head_act_bits=head_act_bits))
        tensors.append({name: t.clone() for name, t in [*model.named_buffers(), *model.named_parameters()]})
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][name], tensors[1][name]) for name in tensors[0])


def test_w8a8kv8_keeps_the_head_input_in_float():
    assert Recipe.from_preset("w8a8kv8").head_input_bits is None
    assert Recipe.from_preset("w8a8kv8", head_act_bits=8).head_input_bits == 8
