"""Recipes: presets, overrides, validation against a model, serialisation, KV bytes per token."""

from __future__ import annotations

import json

import pytest

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.kv4 import KvGranularity
from llmfab.quant.recipe import PRESETS, PruningMethod, Recipe, Sparsity, kv_bytes_per_token

SMOLLM2_LIKE = ModelConfig(
    architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
    num_heads=9, num_kv_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
    rope_theta=100000.0, name="smollm2-like",
)


def test_presets_are_the_named_schemes():
    assert set(PRESETS) == {"w8a8kv8", "w4a8kv4", "w2a8kv4", "accllm"}
    assert (PRESETS["w8a8kv8"].weight_bits, PRESETS["w8a8kv8"].kv_bits) == (8, 8)
    assert (PRESETS["w4a8kv4"].weight_bits, PRESETS["w4a8kv4"].kv_bits) == (4, 4)
    accllm = PRESETS["accllm"]
    assert (accllm.weight_bits, accllm.act_bits, accllm.kv_bits) == (2, 8, 4)
    assert accllm.sparse and accllm.lambda_attention and (accllm.sinks, accllm.window) == (4, 1024)
    for recipe in PRESETS.values():
        recipe.check_model(SMOLLM2_LIKE)


def test_overrides_replace_single_options_and_parse_strings():
    recipe = Recipe.from_preset("w4a8kv4", group_size=32, kv_value_granularity="per-channel", sparsity="2:4",
                                pruning="wanda", calib_texts=["a.txt"], qat_steps=10, act_bits=None)
    assert recipe.group_size == 32 and recipe.kv_value_granularity is KvGranularity.PER_CHANNEL
    assert recipe.sparsity is Sparsity.TWO_FOUR and recipe.pruning is PruningMethod.WANDA
    assert recipe.calib_texts == ("a.txt",) and recipe.qat_steps == 10 and recipe.act_bits == 8
    assert Recipe.from_preset("w8a8kv8", window=256).sinks == 4  # Λ on with the default sinks
    with pytest.raises(AttributeError):
        recipe.group_size = 64  # frozen


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown preset 'w3'.*w8a8kv8, w4a8kv4, w2a8kv4, accllm"):
        Recipe.from_preset("w3")


@pytest.mark.parametrize("option, value, match", [
    ("weight_bits", 5, "--weight-bits 5"), ("act_bits", 4, "--act-bits 4"), ("kv_bits", 3, "--kv-bits 3.*one of 4, 8, 16"),
    ("group_size", 0, "--group-size"), ("calib_samples", 0, "--calib-samples"),
    ("zero_point", "half-integer", "9-bit stored zero points"),
    ("kv_key_granularity", "per-row", "per_token, per_channel"), ("sparsity", "1:4", "none, 2:4"),
])
def test_bad_options_are_named(option, value, match):
    with pytest.raises(InputError, match=match):
        Recipe.from_preset("w8a8kv8" if option == "zero_point" else "w4a8kv4", **{option: value})


def test_group_size_that_does_not_divide_a_layer_names_layer_and_divisors():
    recipe = Recipe.from_preset("w2a8kv4", group_size=128)
    with pytest.raises(InputError) as err:
        recipe.check_model(SMOLLM2_LIKE)
    message = str(err.value)
    assert "576" in message and "q_proj" in message and "hidden_size" in message and "64" in message


def test_2to4_needs_group_size_multiple_of_four():
    with pytest.raises(InputError, match="multiple of 4"):
        Recipe.from_preset("accllm", group_size=6)


def test_window_larger_than_context_and_half_lambda_settings_are_rejected():
    with pytest.raises(InputError, match="trained context"):
        Recipe.from_preset("accllm", window=9000).check_model(SMOLLM2_LIKE)
    with pytest.raises(InputError, match="both --sinks and --window"):
        Recipe.from_preset("w4a8kv4", sinks=4)


def test_dict_round_trip_is_json_ready():
    recipe = Recipe.from_preset("accllm", pruning="wanda", calib_texts=["x.txt"], zero_point="half-integer")
    data = json.loads(json.dumps(recipe.to_dict()))
    assert Recipe.from_dict(data) == recipe
    with pytest.raises(InputError, match="unknown field"):
        Recipe.from_dict({**data, "colour": 1})


def test_kv_bytes_per_token():
    from llmfab.quant.kv_cache_4bit import Kv4CacheConfig
    from llmfab.quant.kv_cache_4bit import kv_bytes_per_token as cache_bytes

    kv4 = PRESETS["w4a8kv4"]  # per-channel keys, per-token values
    assert kv_bytes_per_token(SMOLLM2_LIKE, kv4) == 30 * 3 * ((32 + 4 * 64 / 32) + (32 + 4))
    assert kv_bytes_per_token(SMOLLM2_LIKE, kv4) == cache_bytes(SMOLLM2_LIKE, Kv4CacheConfig())
    assert kv_bytes_per_token(SMOLLM2_LIKE, Recipe.from_preset("w4a8kv4", kv_bits=16)) == 2 * 30 * 3 * 128
    per_token = Recipe.from_preset("w4a8kv4", kv_key_granularity="per-token")
    assert kv_bytes_per_token(SMOLLM2_LIKE, per_token) == 2 * 30 * 3 * (32 + 4)
    assert kv_bytes_per_token(SMOLLM2_LIKE, PRESETS["w8a8kv8"]) == 30 * 3 * ((64 + 8) + (64 + 4))


def test_qat_texts_round_trip_and_default_for_older_manifests():
    recipe = Recipe.from_preset("w2a8kv4", qat_texts=["a.txt", "b.txt"])
    assert recipe.qat_texts == ("a.txt", "b.txt") and recipe.to_dict()["qat_texts"] == ["a.txt", "b.txt"]
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    older = {k: v for k, v in Recipe.from_preset("w2a8kv4").to_dict().items() if k != "qat_texts"}
    assert Recipe.from_dict(older) == Recipe.from_preset("w2a8kv4")


def test_presets_train_as_measured():
    """Both 2-bit presets: block reconstruction (2 epochs × 128 windows, lr 1e-3) then 20 scales-only steps, the
    best measured on SmolLM2 (docs/compression_measurements.md); w4a8kv4 one block epoch at lr
    1e-4 (the 2-bit schedule wrecks it); w8a8kv8 trains nothing."""
    for name in ("w2a8kv4", "accllm"):
        r = PRESETS[name]
        assert (r.qat_block_epochs, r.qat_block_lr, r.qat_block_scale_lr, r.qat_steps) == (2, 1e-3, 1e-3, 20)
        assert r.qat_block_samples == 128 and not r.qat_texts  # 128 windows of the bundled training text
        assert r.trains
    w4 = PRESETS["w4a8kv4"]
    assert (w4.qat_block_epochs, w4.qat_block_lr, w4.qat_block_scale_lr, w4.qat_steps) == (1, 1e-4, 1e-3, 0)
    assert not PRESETS["w8a8kv8"].trains
