"""`llmfab run` and `llmfab eval --program` on the tiny model: quantize -> compile -> run through the
CLI, emulator against reference, and the errors a user can hit."""

from __future__ import annotations

import json

import pytest

from llmfab.cli import main
from llmfab.tests.host.programs import tiny_program  # noqa: F401  (fixture)

PROMPT = ["--prompt", "The sea was", "--max-new-tokens", "6"]


def test_run_streams_the_same_text_on_the_emulator_and_the_reference(tiny_program, capsys):
    artifact, program = tiny_program
    assert main(["run", str(program), *PROMPT]) == 0
    emulated = capsys.readouterr()
    assert emulated.out.strip() and "prompt tokens" in emulated.err and "on emu" in emulated.err
    assert main(["run", str(program), *PROMPT, "--backend", "reference", "--artifact", str(artifact)]) == 0
    assert capsys.readouterr().out == emulated.out


def test_chat_and_sampling_options_work_as_in_generate(tiny_program, capsys):
    _, program = tiny_program
    runs = []
    for _ in range(2):
        assert main(["run", str(program), *PROMPT, "--chat", "--temperature", "0.8", "--top-k", "20",
                     "--seed", "3"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("It is a truth universally acknowledged that the sea was calm. " * 10)
    return path


def test_eval_program_reports_perplexity_through_the_runtime(tiny_program, text_file, capsys):
    artifact, program = tiny_program
    common = ["--text", str(text_file), "--ctx", "64", "--json"]
    assert main(["eval", "--program", str(program), *common]) == 0
    emulated = json.loads(capsys.readouterr().out)
    assert main(["eval", "--artifact", str(artifact), *common]) == 0
    fake_quant = json.loads(capsys.readouterr().out)
    assert main(["eval", "--program", str(program), "--backend", "reference", "--artifact", str(artifact),
                 *common]) == 0
    reference = json.loads(capsys.readouterr().out)
    shared = {"ppl", "nll", "tokens", "ctx", "stride", "windows", "model", "backend", "recipe", "attention",
              "text", "text_tokens", "seconds", "tokens_per_s"}
    assert shared <= emulated.keys() and shared <= fake_quant.keys()
    assert emulated["backend"] == "emu" and emulated["model"] == str(program) and emulated["recipe"] == "w4a8kv4"
    assert emulated["tokens"] == fake_quant["tokens"] and emulated["windows"] == fake_quant["windows"]
    assert emulated["ppl"] == reference["ppl"]  # bit-exact logits
    assert abs(emulated["ppl"] / fake_quant["ppl"] - 1) < 0.02


def test_a_prompt_longer_than_the_program_supports_exits_2(tiny_program, capsys):
    _, program = tiny_program
    assert main(["run", str(program), "--prompt", "the sea " * 200, "--max-new-tokens", "2"]) == 2
    assert "exceeds the context this backend supports (256)" in capsys.readouterr().err


def test_eval_windows_longer_than_the_program_supports_exit_2(tiny_program, text_file, capsys):
    _, program = tiny_program
    assert main(["eval", "--program", str(program), "--text", str(text_file), "--ctx", "300"]) == 2
    assert "past the context of" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--backend", "board"], "unknown backend 'board'; known backends: emu, reference"),
    (["--backend", "reference"], "needs the artifact"),
    (["--artifact", "somewhere"], "--artifact is for --backend reference"),
])
def test_backend_choice_errors_exit_2(argv, message, tiny_program, capsys):
    assert main(["run", str(tiny_program[1]), *PROMPT, *argv]) == 2
    assert message in capsys.readouterr().err


def test_eval_backend_needs_a_program(capsys):
    assert main(["eval", "--backend", "emu", "--max-tokens", "10"]) == 2
    assert "use it with --program DIR" in capsys.readouterr().err


def test_a_damaged_program_exits_2_naming_the_file(tiny_program, tmp_path, capsys):
    import shutil

    program = tmp_path / "program"
    shutil.copytree(tiny_program[1], program)
    with (program / "instructions.bin").open("r+b") as fh:
        fh.seek(40)
        fh.write(b"\xff")
    assert main(["run", str(program), *PROMPT]) == 2
    assert "instructions.bin does not match its sha256" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing"), *PROMPT]) == 2
    assert "is not a program folder" in capsys.readouterr().err
