"""Calibration windows, the fake-quant modules and layer-by-layer compression of the tiny model."""

from __future__ import annotations

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.calibrate import calibration_windows, default_calibration_text
from llmfab.quant.model import iter_linears
from llmfab.quant.qlinear import QuantEmbedding, QuantLinear, fake_quant_per_token
from llmfab.quant.sparse_index import decode_2to4_mask
from llmfab.quant.tokenizer import Tokenizer
from llmfab.tests.quant.tiny_quantized import quantized_tiny, tiny_recipe


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_folder):
    return Tokenizer.from_hf_folder(tiny_hf_folder)


def test_bundled_calibration_text_is_emma_not_the_evaluation_text():
    path = default_calibration_text()
    text = path.read_text(encoding="utf-8")
    assert path.name != "persuasion.txt" and text.startswith("EMMA") and 40_000 < len(text) < 100_000


def test_windows_are_spread_evenly_and_sized_by_the_recipe(tokenizer, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The sea was calm; the sky was blue! " * 40)
    windows = calibration_windows(tokenizer, tiny_recipe("w4a8kv4", calib_texts=[text], calib_samples=3))
    tokens = tokenizer.encode(text.read_text())
    assert windows.shape == (3, 32) and windows.dtype == torch.long
    assert windows[0].tolist() == tokens[:32] and windows[-1].tolist() == tokens[-32:]


def test_too_short_or_missing_calibration_text_is_named(tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(InputError, match="short.txt.*fewer than --calib-seq-len"):
        calibration_windows(tokenizer, tiny_recipe("w4a8kv4", calib_texts=[short]))
    with pytest.raises(InputError, match="missing.txt does not exist"):
        calibration_windows(tokenizer, tiny_recipe("w4a8kv4", calib_texts=[tmp_path / "missing.txt"]))


def test_per_token_fake_quant_has_255_levels_per_row_and_keeps_zero_rows():
    x = torch.randn(5, 64)
    x[2] = 0
    y = fake_quant_per_token(x, 8)
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    assert torch.all((y - x).abs() <= scale / 2 + 1e-7)
    assert torch.equal(y[2], torch.zeros(64))
    codes = y[0] / scale[0]
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 127 + 1e-4


def test_w8_model_stays_close_to_float(tiny_hf_folder):
    _, float_model, model, windows = quantized_tiny(tiny_hf_folder, tiny_recipe("w8a8kv8"))
    assert all(isinstance(m, QuantLinear) for _, _, m in iter_linears(model))
    assert isinstance(model.model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    ref, out = float_model(windows), model(windows)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("pruning", ["sparsegpt", "wanda"])
def test_2to4_weights_keep_two_of_four_and_two_bit_levels(tiny_hf_folder, pruning):
    _, _, model, windows = quantized_tiny(tiny_hf_folder, tiny_recipe("accllm", pruning=pruning))
    for _, _, module in iter_linears(model):
        kept = decode_2to4_mask(module.mask_codes)
        assert torch.all(module.weight[~kept] == 0)
        assert module.codes.shape[1] * 2 == module.in_features and int(module.codes.max()) <= 3
    assert torch.isfinite(model(windows)).all()


def test_gptq_beats_round_to_nearest_on_the_calibration_outputs(tiny_hf_folder):
    from llmfab.quant.weight_quant import GroupQuantConfig, dequantize_groupwise, quantize_groupwise

    checkpoint, float_model, model, windows = quantized_tiny(tiny_hf_folder, tiny_recipe("w2a8kv4", act_bits=16))
    target = float_model.hidden_states(windows)
    for _, _, module in iter_linears(float_model):  # round-to-nearest in place of GPTQ
        quant = quantize_groupwise(module.weight.detach(), GroupQuantConfig(bits=2, group_size=64))
        module.weight.data = dequantize_groupwise(quant)
    gptq_error = (model.hidden_states(windows) - target).pow(2).mean()
    rtn_error = (float_model.hidden_states(windows) - target).pow(2).mean()
    assert gptq_error < rtn_error
