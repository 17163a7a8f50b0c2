"""Model architectures without weights, for compile-and-time studies of models we do not ship.

`model_shape("llama-2-7b")` returns the `ModelConfig` of a published architecture; the compiler's
shape-only mode and the cycle model (`llmfab simulate --model NAME`) take it instead of a
checkpoint. `resolve_model_shape` also accepts a JSON file holding a `ModelConfig.to_dict()`.

Every figure below is copied from the model's published Hugging Face `config.json` (cited per
entry); nothing here is derived.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig, RopeScaling

_SHAPES: dict[str, ModelConfig] = {
    # meta-llama/Llama-2-7b-hf config.json (Touvron et al. 2023, "Llama 2", Table 1).
    "llama-2-7b": ModelConfig(
        architecture="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, name="Llama-2-7B"),
    # meta-llama/Llama-2-13b-hf config.json.
    "llama-2-13b": ModelConfig(
        architecture="llama", vocab_size=32000, hidden_size=5120, intermediate_size=13824,
        num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, name="Llama-2-13B"),
    # meta-llama/Meta-Llama-3-8B config.json (grouped-query attention with 8 KV heads).
    "llama-3-8b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=128001, name="Llama-3-8B"),
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json; equal to the bundled GGUF's header
    # (tests/quant/test_model_shapes.py checks the two agree when the checkpoint is available).
    "smollm2-135m": ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, rope_scaling=RopeScaling(),
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, name="SmolLM2-135M"),
}


def available_model_shapes() -> tuple[str, ...]:
    """Names `model_shape` accepts, sorted."""
    return tuple(sorted(_SHAPES))


def model_shape(name: str) -> ModelConfig:
    """The published architecture called `name` (case-insensitive, '_' or '-')."""
    key = name.strip().lower().replace("_", "-")
    try:
        return _SHAPES[key]
    except KeyError:
        raise InputError(
            f"unknown model shape '{name}'; known shapes: {', '.join(available_model_shapes())}, "
            "or pass a JSON file holding a model config (ModelConfig.to_dict())") from None


def resolve_model_shape(name_or_path: str) -> ModelConfig:
    """A shape by name, or the `ModelConfig` stored as JSON in the file `name_or_path`."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"model config {path}: cannot read it ({exc.strerror}).") from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"model config {path}: not valid JSON ({exc}).") from exc
        try:
            return ModelConfig.from_dict(data)
        except TypeError as exc:
            raise InputError(f"model config {path}: {exc}; write the fields of ModelConfig "
                             "(quant/config.py), e.g. from ModelConfig.to_dict().") from exc
    return model_shape(name_or_path)
