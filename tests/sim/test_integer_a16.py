"""The integer model's A16 LM head (recipe head_act_bits 16) against the fake-quant model, whose
head then keeps its input in float (docs/numerics.md §3.1, §12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.artifact import load_artifact, save_artifact
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.model import LlamaModel
from llmfab.quant.recipe import kv4_cache_config
from llmfab.sim.integer_weights import (
    head_act_bits,
    integer_model_from_artifact,
    integer_model_from_torch,
    round_to_nearest_model,
)
from llmfab.tests.quant.tiny_quantized import quantized_tiny, tiny_recipe
from llmfab.tests.sim.test_integer_model import TOKENS, agreement


@pytest.fixture(scope="module")
def ids(tiny_hf_folder):
    vocab = load_checkpoint(str(tiny_hf_folder), use_cache=False).config.vocab_size
    return torch.randint(0, vocab, (TOKENS,), generator=torch.Generator().manual_seed(0))


def test_head_width_follows_the_fake_quant_head():
    assert head_act_bits(8) == 8 and head_act_bits(None) == 16 and head_act_bits(16) == 16
    with pytest.raises(InputError, match="supports 8 or 16"):
        head_act_bits(4)


def test_a16_head_tracks_the_float_head_input_closer_than_a8(tiny_hf_folder, ids):
    checkpoint = load_checkpoint(str(tiny_hf_folder), use_cache=False)
    model = round_to_nearest_model(LlamaModel.from_checkpoint(checkpoint), bits=4, group_size=32)
    model.lm_head.act_bits = None  # what head_act_bits 16 does to the fake-quant model
    a16 = integer_model_from_torch(model, None)
    a8 = integer_model_from_torch(model, None, head_bits=8)
    assert a16.head_act_bits == 16 and a8.head_act_bits == 8
    relative16, top16 = agreement(model, a16, ids)
    relative8, _ = agreement(model, a8, ids)
    assert relative16 <= 0.04 and top16 >= 0.9  # the bounds of test_integer_logits_track_fake_quant
    assert relative16 < relative8  # the A16 head removes the head's int8 input rounding


@pytest.mark.slow  # calibrates a tiny model (~40 s on the shared machine)
def test_artifact_with_head_act_bits_16_gives_an_a16_integer_model(tiny_hf_folder, ids, tmp_path):
    recipe = tiny_recipe("w4a8kv4", group_size=32, head_act_bits=16)
    checkpoint, _, model, _ = quantized_tiny(tiny_hf_folder, recipe)
    save_artifact(tmp_path / "a16", model, recipe, checkpoint.tokenizer)
    artifact = load_artifact(tmp_path / "a16")
    integer = integer_model_from_artifact(artifact)
    assert integer.head_act_bits == 16 and artifact.model.lm_head.act_bits is None
    relative, top1 = agreement(artifact.model, integer, ids)
    # the same artifact with an A8 head (the stored tensors do not depend on head_act_bits)
    artifact.model.lm_head.act_bits = 8
    head_a8 = integer_model_from_torch(artifact.model, kv4_cache_config(artifact.recipe))
    relative8, _ = agreement(artifact.model, head_a8, ids)
    # a calibrated artifact sits a little further from torch than the RTN models of
    # test_integer_logits_track_fake_quant (measured 0.085 with either head width); A16 no further than A8
    assert relative <= min(relative8, 0.1) and top1 >= 0.85
