"""`llmfab quantize` for every preset, then `eval --artifact` and `generate --artifact`; clean errors."""

from __future__ import annotations

import json

import pytest

from llmfab.cli import main

FAST = ["--calib-samples", "2", "--calib-seq-len", "32"]


@pytest.mark.parametrize("preset", ["w8a8kv8", "w4a8kv4", "w2a8kv4", "accllm"])
def test_every_preset_quantizes_evaluates_and_generates(preset, tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / preset
    extra = ["--window", "32"] if preset == "accllm" else []
    assert main(["quantize", str(tiny_hf_folder), "--preset", preset, "-o", str(out), *FAST, *extra]) == 0
    summary = capsys.readouterr().out
    assert "bits/weight" in summary and "MB" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == preset

    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged that the sea was calm. " * 10)
    assert main(["eval", "--artifact", str(out), "--text", str(text), "--ctx", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "torch-fakequant" and report["recipe"] == preset and report["ppl"] > 1
    assert report["bits_per_weight"] == manifest["sizes"]["bits_per_weight"]
    assert ("Λ attention" in report["attention"]) == (preset == "accllm")

    assert main(["generate", "--artifact", str(out), "--prompt", "The sea", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_overrides_reach_the_manifest(tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "custom"
    text = tmp_path / "calib.txt"
    text.write_text("The sea was calm; the sky was blue! " * 30)
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w4a8kv4", "-o", str(out), *FAST,
                 "--weight-bits", "3", "--group-size", "32", "--act-bits", "16", "--kv-bits", "8",
                 "--kv-granularity", "per-token,per-channel", "--sparsity", "2:4", "--pruning", "wanda",
                 "--sinks", "2", "--window", "16", "--calib-text", str(text), "--qat-steps", "5"]) == 0
    assert "QAT: 5 steps" in capsys.readouterr().err
    assert not (tmp_path / "custom.qat.pt").exists()  # the training checkpoint is gone once done
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]
    assert recipe | {"calib_texts": None} == recipe | {
        "weight_bits": 3, "group_size": 32, "act_bits": 16, "kv_bits": 8, "kv_key_granularity": "per_token",
        "kv_value_granularity": "per_channel",
        "sparsity": "2:4", "pruning": "wanda", "sinks": 2, "window": 16, "qat_steps": 5, "calib_texts": None}
    assert recipe["calib_texts"] == [str(text)]


@pytest.mark.parametrize("args, message", [
    (["--preset", "w5"], "unknown preset 'w5'; known presets: w8a8kv8"),
    (["--preset", "w4a8kv4", "--group-size", "48"], "does not divide the input dimension 64"),
    (["--preset", "accllm"], "trained context (256 tokens)"),
    (["--preset", "w4a8kv4", "--weight-bits", "5"], "--weight-bits 5"),
])
def test_bad_recipes_exit_2_with_a_clear_message(args, message, tiny_hf_folder, tmp_path, capsys):
    assert main(["quantize", str(tiny_hf_folder), *args, "-o", str(tmp_path / "x"), *FAST]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_of_a_damaged_artifact_exits_2(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{not json")
    assert main(["eval", "--artifact", str(tmp_path), "--ctx", "64"]) == 2
    assert "manifest.json is not valid JSON" in capsys.readouterr().err


def test_help_lists_the_block_reconstruction_options(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--qat-block-epochs", "--qat-block-samples", "--qat-block-lr", "--qat-block-scale-lr",
                   "--qat-text", "--qat-from", "--keep-unrounded"):
        assert option in text
    assert "Block-AP" in text and "unrounded.safetensors" in text


def test_block_reconstruction_from_a_kept_unrounded_artifact(tiny_hf_folder, tmp_path, capsys):
    """PTQ with --keep-unrounded, then --qat-from it: block reconstruction (on its own --qat-text)
    and the end-to-end step run without calibrating again."""
    ptq = tmp_path / "ptq"
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(ptq), *FAST,
                 "--qat-steps", "0", "--qat-block-epochs", "0", "--keep-unrounded"]) == 0
    assert (ptq / "unrounded.safetensors").is_file()
    text = tmp_path / "train.txt"
    text.write_text("Captain Wentworth wrote the letter while the others talked. " * 40)
    out = tmp_path / "block"
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(out), *FAST,
                 "--qat-from", str(ptq), "--qat-text", str(text), "--qat-block-epochs", "1",
                 "--qat-block-samples", "4", "--qat-block-lr", "1e-3", "--qat-steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "block reconstruction: 2 layers, held-out output MSE" in captured.err and "QAT: 2 steps" in captured.err
    assert not (out / "unrounded.safetensors").exists()  # trained: no pre-rounding weights to keep
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]
    assert (recipe["qat_block_epochs"], recipe["qat_block_lr"], recipe["qat_texts"]) == (1, 1e-3, [str(text)])
    assert json.loads((ptq / "manifest.json").read_text())["recipe"]["qat_texts"] == []

    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(tmp_path / "x"), *FAST,
                 "--qat-steps", "0", "--keep-unrounded"]) == 2  # w2a8kv4 defaults to block reconstruction
    assert "--keep-unrounded keeps GPTQ's pre-rounding weights" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
