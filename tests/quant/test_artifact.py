"""The packed artifact: bit-identical round trip, sizes, and clear errors for damaged folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.artifact import FORMAT_VERSION, check_output_folder, load_artifact, save_artifact
from llmfab.quant.packing import packed_length
from llmfab.tests.fixtures.tiny_models import TINY_CONFIGS, write_tiny_hf_folder
from llmfab.tests.quant.tiny_quantized import quantized_tiny, tiny_recipe


@pytest.fixture(scope="module")
def saved(tiny_hf_folder, tmp_path_factory):
    """(quantized accllm model, recipe, windows, artifact folder) of the tiny untied model."""
    recipe = tiny_recipe("accllm", zero_point="half-integer")
    checkpoint, _, model, windows = quantized_tiny(tiny_hf_folder, recipe)
    folder = tmp_path_factory.mktemp("artifact") / "accllm"
    save_artifact(folder, model, recipe, checkpoint.tokenizer, model_name="tiny")
    return model, recipe, windows, folder


@pytest.fixture
def copy(saved, tmp_path):
    """A fresh copy of the saved artifact folder to damage."""
    return shutil.copytree(saved[3], tmp_path / "copy")


def test_load_of_save_is_bit_identical(saved):
    model, recipe, windows, folder = saved
    artifact = load_artifact(folder)
    assert artifact.recipe == recipe and artifact.config == model.config
    original = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    loaded = {**dict(artifact.model.named_buffers()), **dict(artifact.model.named_parameters())}
    assert original.keys() == loaded.keys()
    for name, tensor in original.items():
        assert tensor.dtype == loaded[name].dtype and torch.equal(tensor, loaded[name]), name
    assert torch.equal(model(windows), artifact.model(windows))


def test_manifest_reports_format_sizes_and_checksums(saved):
    model, _, _, folder = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["recipe"]["name"] == "accllm"
    layout = manifest["quantized"]["model.layers.0.mlp.down_proj"]
    assert layout["sparse"] and layout["bits"] == 2 and layout["zero_bits"] == 3
    codes = manifest["tensors"]["model.layers.0.mlp.down_proj.codes"]
    assert codes["dtype"] == "uint8" and codes["shape"] == [64, packed_length(64, 2)]
    index = manifest["tensors"]["model.layers.0.mlp.down_proj.index"]
    assert index["shape"] == [64, packed_length(128 // 4, 3)] and len(index["sha256"]) == 64
    sizes = manifest["sizes"]
    # 1 bit of codes + 0.75 bit of index + (16 + 3) / 64 bits of group parameters per weight
    assert 2.0 < sizes["bits_per_weight"] < 2.2
    assert sizes["model_bytes"] == sum(
        torch.Size(t["shape"]).numel() * {"uint8": 1, "float16": 2, "float32": 4}[t["dtype"]]
        for t in manifest["tensors"].values())
    assert sizes["kv_max_tokens"] == 36 and sizes["kv_bytes_per_token"] > 0


def test_tied_embeddings_are_stored_once(tmp_path):
    folder = write_tiny_hf_folder(tmp_path / "tied", TINY_CONFIGS["mha-tied"])
    recipe = tiny_recipe("w4a8kv4", group_size=32)  # intermediate size 96
    checkpoint, _, model, windows = quantized_tiny(folder, recipe)
    save_artifact(tmp_path / "out", model, recipe, checkpoint.tokenizer)
    artifact = load_artifact(tmp_path / "out")
    assert not any(name.startswith("lm_head") for name in artifact.manifest["tensors"])
    assert artifact.model.lm_head.codes is artifact.model.model.embed_tokens.codes
    assert torch.equal(model(windows), artifact.model(windows))


def test_truncated_tensor_file_is_named(copy):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="model.safetensors is damaged"):
        load_artifact(copy)


def test_changed_tensor_bytes_fail_the_checksum_naming_the_tensor(copy):
    path = copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to the last tensor in the file
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"tensor '.*' in .*model.safetensors does not match .*sha256"):
        load_artifact(copy)


def test_wrong_format_version_and_missing_manifest(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=f"format version {FORMAT_VERSION + 1}.*re-create"):
        load_artifact(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(InputError, match="not an llmfab artifact"):
        load_artifact(copy)


def test_mismatched_manifest_and_tokenizer_are_named(copy, saved):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tensors"]["model.norm.scale"] = manifest["tensors"].pop("model.norm.weight")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="'model.norm.scale'"):
        load_artifact(copy)
    shutil.copy(saved[3] / "manifest.json", copy / "manifest.json")
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + "\n")
    with pytest.raises(InputError, match="tokenizer.json does not match"):
        load_artifact(copy)


def test_output_folder_with_other_files_is_refused_and_artifacts_are_replaced(saved, tmp_path):
    model, recipe, _, folder = saved
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an llmfab artifact folder"):
        check_output_folder(tmp_path)
    check_output_folder(folder)  # an earlier artifact may be replaced
    check_output_folder(tmp_path / "new")


def test_unrounded_weights_round_trip_next_to_the_artifact(saved, copy):
    """``unrounded.safetensors`` (``--keep-unrounded``) gives the loaded model GPTQ's pre-rounding
    weights bit for bit, outside the manifest; a file of other codes or a damaged one is refused."""
    from llmfab.quant.artifact import UNROUNDED, load_unrounded, save_unrounded
    from llmfab.quant.model import iter_linears

    model = saved[0]
    assert not load_unrounded(copy, load_artifact(copy).model)  # none written: nothing attached
    save_unrounded(copy, model)
    loaded = load_artifact(copy).model  # the extra file does not disturb the artifact's checks
    assert load_unrounded(copy, loaded)
    for (_, _, a), (_, _, b) in zip(iter_linears(model), iter_linears(loaded)):
        assert b.unrounded.dtype == torch.float32 and torch.equal(a.unrounded, b.unrounded)

    other = load_artifact(copy).model
    other.model.layers[0].self_attn.q_proj.scales[0, 0] += 1
    with pytest.raises(InputError, match="other codes.*--keep-unrounded"):
        load_unrounded(copy, other)
    (copy / UNROUNDED).write_bytes((copy / UNROUNDED).read_bytes()[:100])
    with pytest.raises(InputError, match="damaged"):
        load_unrounded(copy, load_artifact(copy).model)
    stripped = load_artifact(copy).model
    for _, _, module in iter_linears(stripped):
        module.unrounded = None
    with pytest.raises(InputError, match="no unrounded GPTQ weights"):
        save_unrounded(copy, stripped)
