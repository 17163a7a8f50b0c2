"""Quantize the tiny test model with a preset and a few short calibration windows."""

from __future__ import annotations

import torch

from llmfab.quant.calibrate import calibration_windows, default_calibration_text, quantize_model
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.model import LlamaModel, iter_linears
from llmfab.quant.recipe import Recipe

FAST_CALIBRATION = dict(calib_samples=2, calib_seq_len=32)
# Training on the calibration excerpt (Emma's start), not the bundled four-novel text: the QAT and
# block-reconstruction tests measure held-out windows of the text they train on, and their
# thresholds were set on this one.
EMMA_TRAINING = dict(qat_texts=(str(default_calibration_text()),))


def tiny_recipe(preset: str, **overrides) -> Recipe:
    """``preset`` with short calibration (and a window that fits the tiny model's context)."""
    if preset == "accllm":
        overrides.setdefault("window", 32)
    return Recipe.from_preset(preset, **{**FAST_CALIBRATION, **overrides})


def quantized_tiny(folder, recipe: Recipe):
    """(checkpoint, float model, quantized model, calibration windows) for the tiny HF folder."""
    checkpoint = load_checkpoint(str(folder), use_cache=False)  # leave the session cache to its own tests
    windows = calibration_windows(checkpoint.tokenizer, recipe)
    model = quantize_model(LlamaModel.from_checkpoint(checkpoint), recipe, windows)
    return checkpoint, LlamaModel.from_checkpoint(checkpoint), model, windows


def sharpened_tiny(folder) -> LlamaModel:
    """The tiny float model with peaked next-token distributions (decoder weights x4, LM head x30):
    the random tiny model's are nearly uniform, so quantization barely moves its KL and a broken
    training could not be told from a working one."""
    model = LlamaModel.from_checkpoint(load_checkpoint(str(folder), use_cache=False))
    with torch.no_grad():
        for _, _, linear in iter_linears(model):
            linear.weight.mul_(4.0)
        model.lm_head.weight.mul_(30.0)
    return model


def quantized_sharp_tiny(folder, recipe: Recipe):
    """(checkpoint, sharpened float model, its quantized copy, calibration windows)."""
    checkpoint = load_checkpoint(str(folder), use_cache=False)
    windows = calibration_windows(checkpoint.tokenizer, recipe)
    return checkpoint, sharpened_tiny(folder), quantize_model(sharpened_tiny(folder), recipe, windows), windows
