"""GGUF ingest: metadata -> config, dequantization of F32/F16/Q8_0/Q4_1, Q/K un-permutation,
tokenizer, and clear errors for damaged or unsupported files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.gguf_reader import read_gguf
from llmfab.tests.fixtures.tiny_models import GGUF_TYPES, gguf_kind, write_tiny_gguf

# Worst-case dequantization error of each GGML type for weights of magnitude <= ~0.1
TOLERANCE = {"F32": 0.0, "F16": 1e-4, "Q8_0": 2e-3, "Q4_1": 2e-2}


def test_config_from_metadata(tiny_gguf):
    path, _, tok = tiny_gguf
    config, _, tokenizer = read_gguf(path)
    assert (config.hidden_size, config.intermediate_size, config.num_layers) == (64, 96, 2)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 4, 16)
    assert config.tie_word_embeddings and config.rope_theta == 500.0
    assert config.vocab_size == tok.get_vocab_size() == tokenizer.vocab_size


def test_weights_dequantized_and_unpermuted(tiny_gguf):
    path, original, _ = tiny_gguf
    _, weights, _ = read_gguf(path)
    assert set(weights) == set(original)
    for name, expected in original.items():
        kind = gguf_kind(name)
        tol = TOLERANCE[GGUF_TYPES.get(kind, "F32")]
        err = (weights[name] - expected).abs().max().item()
        assert err <= tol, f"{name} ({kind}) off by {err}"
    # attn_q is stored as F32 in the fixture: exact equality proves the row permutation is undone
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[q], original[q])


def test_tokenizer_matches_source_bpe(tiny_gguf):
    path, _, tok = tiny_gguf
    _, _, tokenizer = read_gguf(path)
    text = "It is a truth universally acknowledged, 1234 that the sea was blue!"
    assert tokenizer.encode(text) == tok.encode(text).ids
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token_id == 2 and 2 in tokenizer.stop_ids
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_missing_path_is_clear(tmp_path):
    from llmfab.quant.checkpoint import load_checkpoint

    with pytest.raises(InputError, match="neither a known name"):
        load_checkpoint(str(tmp_path / "absent.gguf"))


def test_wrong_magic(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(InputError, match="not a GGUF file"):
        read_gguf(bad)


@pytest.mark.parametrize("keep", [20, 0.5, 0.98])
def test_truncated_file(tiny_gguf, tmp_path, keep):
    path = tiny_gguf[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(InputError, match="corrupt|truncated"):
        read_gguf(cut)


def test_corrupt_header(tiny_gguf, tmp_path):
    data = bytearray(tiny_gguf[0].read_bytes())
    data[8:16] = np.array([2**40], dtype=np.uint64).tobytes()  # absurd tensor count
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt|truncated"):
        read_gguf(bad)


def test_shape_disagrees_with_config(tmp_path):
    path, _, _ = write_tiny_gguf(tmp_path / "wrong.gguf", hidden_override=48)
    with pytest.raises(InputError, match="model config .* needs"):
        read_gguf(path)


def test_unsupported_architecture(tmp_path):
    path, _, _ = write_tiny_gguf(tmp_path / "gpt2.gguf", architecture="gpt2")
    with pytest.raises(InputError, match="'gpt2' is not supported; supported architectures: llama"):
        read_gguf(path)


def test_copy_of_file_loads_identically(tiny_gguf, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf[0], copy)
    a, b = read_gguf(tiny_gguf[0])[1], read_gguf(copy)[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
