"""SmolLM2-135M through quantize -> compile -> run on the CLI (slow: minutes on 2 cores)."""

from __future__ import annotations

import pytest

from llmfab.cli import main

pytestmark = pytest.mark.slow


def test_smollm2_quantizes_compiles_and_runs_on_the_emulator_like_the_reference(tmp_path, capsys):
    artifact, program = tmp_path / "w4a8kv4", tmp_path / "w4a8kv4.program"
    assert main(["quantize", "smollm2-135m", "--preset", "w4a8kv4", "-o", str(artifact),
                 "--calib-samples", "2", "--calib-seq-len", "128", "--qat-block-epochs", "0"]) == 0
    assert main(["compile", str(artifact), "--board", "u280", "-o", str(program)]) == 0
    capsys.readouterr()
    prompt = ["--prompt", "The sea was calm and the sky", "--max-new-tokens", "3"]
    assert main(["run", str(program), *prompt]) == 0
    emulated = capsys.readouterr()
    assert emulated.out.strip() and "3 new tokens" in emulated.err
    assert main(["run", str(program), *prompt, "--backend", "reference", "--artifact", str(artifact)]) == 0
    assert capsys.readouterr().out == emulated.out
