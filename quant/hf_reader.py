"""Read a Hugging Face model folder (config.json, *.safetensors, tokenizer.json)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmfab.errors import InputError
from llmfab.quant.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from llmfab.quant.tokenizer import Tokenizer
from llmfab.quant.weights import validate_weights

HF_MODEL_TYPES = {"llama": "llama"}


def _rope_scaling(cfg: dict, path: Path) -> tuple[float, RopeScaling]:
    """(rope_theta, scaling) from either `rope_scaling`+`rope_theta` or v5's `rope_parameters`."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, RopeScaling()
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    try:
        return theta, RopeScaling(kind, **{k: params[k] for k in keys if k in params})
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def read_hf_config(path: Path) -> ModelConfig:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(f"{path}: no config.json; pass a Hugging Face model folder or a .gguf file")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_path}: not valid JSON ({err})") from None
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise InputError(
            f"{config_path}: model_type {model_type!r} is not supported; supported "
            f"architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    theta, scaling = _rope_scaling(cfg, config_path)
    heads = cfg["num_attention_heads"]
    eos = cfg.get("eos_token_id")
    try:
        return ModelConfig(
            architecture=HF_MODEL_TYPES[model_type],
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            name=cfg.get("_name_or_path") or path.name,
        )
    except KeyError as err:
        raise InputError(f"{config_path}: lacks required field {err.args[0]!r}") from None


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / shard for shard in shards]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise InputError(f"{index}: shard(s) {', '.join(absent)} are missing from the folder")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"{path}: no *.safetensors weights (PyTorch .bin files are not read)")
    return files


def read_hf_folder(path: Path, progress=None) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = read_hf_config(path)
    weights: dict[str, torch.Tensor] = {}
    files = safetensors_files(path)
    for file in progress(files, desc=f"read {path.name}") if progress else files:
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise InputError(f"{file}: corrupt or truncated safetensors file ({err})") from None
        weights.update({k: v.to(torch.float32) for k, v in tensors.items()})
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    validate_weights(config, weights, str(path))
    return config, weights, Tokenizer.from_hf_folder(path)
