"""Session-wide test setup: an isolated float cache and tiny model fixtures."""

from __future__ import annotations

import os

import pytest

from llmfab.tests.fixtures.tiny_models import TINY_CONFIGS, write_tiny_gguf, write_tiny_hf_folder


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the float cache of the test session out of the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("llmfab-cache")
    old = os.environ.get("LLMFAB_CACHE")
    os.environ["LLMFAB_CACHE"] = str(folder)
    os.environ.setdefault("LLMFAB_PROGRESS", "0")
    yield folder
    if old is None:
        os.environ.pop("LLMFAB_CACHE", None)
    else:
        os.environ["LLMFAB_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_hf_folder(tmp_path_factory):
    """A random tiny LLaMA saved by transformers (sharded safetensors, tokenizer, template)."""
    return write_tiny_hf_folder(tmp_path_factory.mktemp("tiny-hf"), TINY_CONFIGS["gqa-llama3"])


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """A tiny GGUF written like llama.cpp's converter, plus the float weights it came from."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")
