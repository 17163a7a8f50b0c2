"""Tiny compressed artifacts and programs for the scheduler, program and emulator tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.model_plan import ModelPlan, WeightSource
from llmfab.compiler.program import load_program, write_program
from llmfab.compiler.scheduler import compile_model
from llmfab.quant.artifact import load_artifact, save_artifact
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.model import LlamaModel
from llmfab.quant.recipe import Recipe
from llmfab.sim.integer_weights import round_to_nearest_model

# 2-bit 2:4 weights with half-integer zero points (the accllm formats), KV4 cache, dense attention
SPARSE_W2 = dict(recipe=dict(preset="w2a8kv4", group_size=32, sparsity="2:4", zero_point="half-integer"),
                 rtn=dict(bits=2, group_size=32, sparse=True, zero_halves=True))
W8_KV8 = dict(recipe=dict(preset="w8a8kv8", group_size=32, smooth_alpha=None), rtn=dict(bits=8, group_size=32))
DENSE_W4 = dict(recipe=dict(preset="w4a8kv4", group_size=32, smooth_alpha=None),
                rtn=dict(bits=4, group_size=32))


def tiny_artifact(folder: Path, hf_folder: Path, formats: dict = SPARSE_W2) -> Path:
    """A round-to-nearest compressed tiny model saved as an artifact in ``folder``."""
    checkpoint = load_checkpoint(str(hf_folder), use_cache=False)
    model = round_to_nearest_model(LlamaModel.from_checkpoint(checkpoint), **formats["rtn"])
    options = dict(formats["recipe"])
    recipe = Recipe.from_preset(options.pop("preset"), **options)
    save_artifact(folder, model, recipe, checkpoint.tokenizer, model_name="tiny")
    return folder


def engine(preset: str = "u280-default", **changes) -> HardwareConfig:
    """A preset's hardware config with engine parameters replaced (e.g. smaller buffers)."""
    config = HardwareConfig.from_preset(preset)
    return dataclasses.replace(config, engine=config.engine.replace(**changes))


def compile_artifact(artifact_folder: Path, out: Path, hardware: HardwareConfig):
    """(artifact, compiled, loaded program) for ``artifact_folder`` on ``hardware``."""
    artifact = load_artifact(artifact_folder)
    compiled = compile_model(ModelPlan.build(artifact.config, artifact.recipe, "tiny"), hardware,
                             WeightSource(artifact.model))
    write_program(out, compiled, artifact.tokenizer.to_json(), "tiny")
    return artifact, compiled, load_program(out, hardware)
