"""`llmfab simulate`: JSON keys, folder and --model give the same timing, clear errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from llmfab.cli import main

REQUIRED = ("decode_tokens_per_s", "prefill_tokens_per_s", "hbm_bytes_per_token", "hbm_utilization",
            "tokens_per_joule")
SMALL = ["--engine", "u280-small", "--preset", "w2a8kv4"]
TINY = {"architecture": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_layers": 3,
        "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "name": "tiny"}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("shape") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def simulate_json(capsys, *args):
    assert main(["simulate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_model_shape_json_has_the_headline_keys(capsys, tiny_config):
    result = simulate_json(capsys, "--model", tiny_config, *SMALL, "--context", "40", "--prompt-tokens", "24")
    for key in REQUIRED:
        assert result[key] > 0, key
    assert 0 < result["hbm_utilization"] <= 1
    assert result["decode_tokens_per_s"] <= result["hbm_roofline_tokens_per_s"]
    assert len([k for k in result["cycles_by_layer"] if k.startswith("layer")]) == 3


def test_program_folder_times_like_the_model_shape(tmp_path, capsys, tiny_config):
    folder = tmp_path / "prog"
    assert main(["compile", "--shape-only", "--model-config", tiny_config, "--preset", "w2a8kv4",
                 "--engine", "u280-small", "-o", str(folder)]) == 0
    capsys.readouterr()
    from_folder = simulate_json(capsys, str(folder), "--context", "40", "--prompt-tokens", "24")
    from_model = simulate_json(capsys, "--model", tiny_config, *SMALL, "--context", "40", "--prompt-tokens", "24")
    assert from_folder["decode_cycles"] == from_model["decode_cycles"]
    assert from_folder["prefill_seconds"] == from_model["prefill_seconds"]


def test_text_output_names_the_figures(capsys, tiny_config):
    assert main(["simulate", "--model", tiny_config, *SMALL, "--context", "8", "--prompt-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "HBM bytes per token" in out and "tokens/J" in out


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt-5"], "unknown model shape"),
    (["--model", "smollm2-135m", "--board", "u9000"], "unknown board"),
    (["--model", "smollm2-135m", "--engine", "huge"], "unknown engine preset"),
    (["--model", "smollm2-135m", "--preset", "w1"], "unknown preset"),
    ([], "either a PROGRAM folder or --model"),
    (["somewhere", "--model", "smollm2-135m"], "not both"),
    (["--model", "smollm2-135m", "--context", "-1"], "cannot be negative"),
    (["--model", "smollm2-135m", "--context", "100000", "--preset", "w2a8kv4"], "exceeds this dense-attention"),
    (["/nonexistent/program"], "not a program folder"),
])
def test_bad_input_exits_2_with_the_fix(args, message, capsys):
    assert main(["simulate", *args]) == 2
    assert message in capsys.readouterr().err


def test_an_engine_too_big_for_its_board_is_flagged(capsys, tiny_config):
    result = simulate_json(capsys, "--model", tiny_config, "--preset", "w2a8kv4", "--engine", "u280-accllm",
                           "--board", "vhk158", "--context", "8", "--prompt-tokens", "8")
    assert any("does not fit board 'vhk158'" in w for w in result["warnings"])
    fine = simulate_json(capsys, "--model", tiny_config, *SMALL, "--context", "8", "--prompt-tokens", "8")
    assert fine["warnings"] == []


def test_datapath_option_names_the_timing_and_the_built_engine_is_not_faster(capsys, tiny_config):
    common = ["--model", tiny_config, *SMALL, "--context", "40", "--prompt-tokens", "24"]
    built = simulate_json(capsys, *common)
    target = simulate_json(capsys, *common, "--datapath", "target")
    assert built["datapath"] == "rtl" and target["datapath"] == "target"
    assert built["decode_cycles"] != target["decode_cycles"]
    assert built["decode_tokens_per_s"] <= built["hbm_roofline_tokens_per_s"]
