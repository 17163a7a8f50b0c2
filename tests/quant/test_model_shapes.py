"""Weightless model shapes: published parameter counts, name resolution, JSON configs, errors."""

from __future__ import annotations

import json

import pytest

from llmfab.errors import InputError
from llmfab.quant.model_shapes import available_model_shapes, model_shape, resolve_model_shape

# Exact parameter counts of the released checkpoints (sum of tensor sizes in their safetensors).
PUBLISHED_PARAMETERS = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-3-8b": 8_030_261_248,
    "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_count_matches_the_released_checkpoint(name):
    assert model_shape(name).num_parameters() == PUBLISHED_PARAMETERS[name]


def test_every_shape_is_listed_and_names_are_forgiving():
    assert set(available_model_shapes()) == set(PUBLISHED_PARAMETERS)
    assert model_shape("Llama_2_7B") == model_shape("llama-2-7b")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError, match="llama-2-7b"):
        model_shape("gpt-5")


def test_json_file_round_trips(tmp_path):
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(model_shape("llama-3-8b").to_dict()))
    assert resolve_model_shape(str(path)) == model_shape("llama-3-8b")
    assert resolve_model_shape("smollm2-135m") == model_shape("smollm2-135m")


def test_bad_json_files_are_input_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        resolve_model_shape(str(broken))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"hidden": 3}))
    with pytest.raises(InputError, match="ModelConfig"):
        resolve_model_shape(str(wrong))
    with pytest.raises(InputError, match="cannot read"):
        resolve_model_shape(str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_smollm2_shape_equals_the_bundled_checkpoint():
    from llmfab.quant.checkpoint import load_checkpoint

    bundled = load_checkpoint("smollm2-135m").config
    shape = model_shape("smollm2-135m")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "max_position_embeddings", "rope_theta", "tie_word_embeddings"):
        assert getattr(shape, field) == getattr(bundled, field), field
    assert shape.rms_norm_eps == pytest.approx(bundled.rms_norm_eps)
