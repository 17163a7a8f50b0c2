"""`llmfab report`: the folder has the plots and a summary; bad input fails with exit 2."""

from __future__ import annotations

import json

import pytest

from llmfab.boards.hardware import HardwareConfig
from llmfab.cli import main
from llmfab.quant.config import ModelConfig
from llmfab.quant.recipe import Recipe
from llmfab.sim import report_plots
from llmfab.sim.report import Sweeps, write_report

TINY = {"architecture": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_layers": 2,
        "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "name": "tiny"}
PLOTS = ("roofline.png", "layers.png", "context.png", "prefill.png", "design_sweep.png")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("shape") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


SMALL_SWEEPS = Sweeps(contexts=(256, 2048, 8192), prompts=(8, 40), array_sizes=(16, 64), clocks_mhz=(200.0, 300.0))


def write_tiny_report(out):
    write_report(out, ModelConfig.from_dict(TINY), Recipe.from_preset("w2a8kv4"),
                 HardwareConfig.from_preset("u280-small"), context=64, prompt_tokens=32, sweeps=SMALL_SWEEPS)


@pytest.fixture
def no_rendering(monkeypatch):
    """Skip matplotlib's rendering (seconds per figure on a busy machine); the slow test renders."""
    def placeholder(path, *args, **kwargs):
        path.write_bytes(b"placeholder")

    for name in ("roofline", "layer_breakdown", "context_sweep", "prefill_sweep", "design_sweep"):
        monkeypatch.setattr(report_plots, name, placeholder)


def test_report_folder_has_plots_and_summary(tmp_path, no_rendering):
    out = tmp_path / "report"
    write_tiny_report(out)
    assert all((out / name).is_file() for name in PLOTS)
    summary = (out / "summary.md").read_text()
    assert "decode at context" in summary and "tokens/J" in summary
    for name in PLOTS:
        assert f"({name})" in summary
    data = json.loads((out / "summary.json").read_text())
    curves = data["context_sweep"]
    lam, dense = (curves[k] for k in curves)
    # Past the ring (S + W = 1028) Λ is flat up to the key block phase (the staged tokens of the
    # unfinished block are loaded, docs/performance.md); dense keeps slowing down.
    assert lam[-1]["decode_tokens_per_s"] == pytest.approx(lam[-2]["decode_tokens_per_s"], rel=1e-3)
    assert dense[-1]["decode_tokens_per_s"] < dense[-2]["decode_tokens_per_s"] < dense[0]["decode_tokens_per_s"]
    assert data["design_sweep"]["fits"] == [[True, True], [True, True]]
    prefill = data["design_sweep"]["prefill_chunk_tokens_per_s"]
    assert prefill[1][0] > prefill[0][0] and prefill[0][1] > prefill[0][0]  # bigger array, faster clock
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.slow
def test_report_command_with_default_sweeps(tmp_path, tiny_config, capsys):
    out = tmp_path / "report"
    args = ["report", "-o", str(out), "--model", tiny_config, "--preset", "w2a8kv4", "--engine", "u280-small",
            "--context", "64", "--prompt-tokens", "32"]
    assert main(args) == 0
    assert "tokens/J" in capsys.readouterr().out
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    assert main(args) == 0  # writing again replaces the report in place
    assert sorted(p.name for p in out.iterdir()) == sorted([*PLOTS, "summary.md", "summary.json"])


def test_report_refuses_a_foreign_folder(tmp_path, tiny_config, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["report", "-o", str(tmp_path), "--model", tiny_config]) == 2
    assert "not a report folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt-5"], "unknown model shape"),
    (["--board", "u9000"], "unknown board"),
    (["--context", "-3"], "--context"),
])
def test_bad_input_exits_2(tmp_path, args, message, capsys):
    assert main(["report", "-o", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err
