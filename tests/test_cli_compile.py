"""`llmfab compile`: a program folder from an artifact, a shape-only program, and clean errors."""

from __future__ import annotations

import json

import pytest

from llmfab.cli import main
from llmfab.tests.sim.emulator_fixtures import tiny_artifact


@pytest.fixture(scope="module")
def artifact(tiny_hf_folder, tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("art") / "tiny", tiny_hf_folder)


def test_compile_writes_a_program_and_reports(artifact, tmp_path, capsys):
    out = tmp_path / "prog"
    assert main(["compile", str(artifact), "--board", "u280", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prefill chunk C =" in text and "GEMV_SPARSE" in text and "weight tiles" in text
    assert "HBM:" in text and f"wrote {out}" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine_preset"] == "u280-default" and not manifest["shape_only"]
    assert (out / "instructions.bin").stat().st_size == 32 * sum(r["count"] for r in manifest["routines"].values())


def test_shape_only_compile_of_a_named_config(tmp_path, capsys):
    out = tmp_path / "smol"
    assert main(["compile", "--shape-only", "--model-config", "smollm2-135m", "--board", "u280", "-o", str(out)]) == 0
    assert "shape-only program" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shape_only"] and not (out / "hbm").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["compile", "ART", "--board", "u280"], "-o PROGRAM"),
    (["compile", "--shape-only", "-o", "X"], "--model-config"),
    (["compile", "-o", "X"], "ARTIFACT"),
    (["compile", "--shape-only", "--model-config", "no-such-model", "-o", "X"], "no-such-model"),
    (["compile", "--shape-only", "--model-config", "smollm2-135m", "--engine", "nope", "-o", "X"], "unknown engine preset"),
])
def test_errors_name_the_fix(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
