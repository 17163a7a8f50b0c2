"""The llmfab command line: help texts, JSON output, streaming, and clean errors (exit 2)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from llmfab.cli import COMMANDS, build_parser, main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llmfab.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def undocumented_options(parser, path):
    """Options (recursively through nested subcommands) that have no help text."""
    missing = []
    for action in parser._actions:
        if action.dest == "help":
            continue
        if not action.help:
            missing.append(f"{path}: {action.option_strings or action.dest}")
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += undocumented_options(sub, f"{path} {name}")
    return missing


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    assert undocumented_options(sub, f"llmfab {command}") == []
    assert sub.format_help()


def test_help_runs():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("models", "eval", "generate", "demo"):
        assert command in result.stdout


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "smollm2-135m"


def test_eval_json_on_tiny_model(tiny_hf_folder, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged that the sea was calm. " * 30)
    assert main(["eval", str(tiny_hf_folder), "--text", str(text), "--ctx", "64",
                 "--stride", "32", "--max-tokens", "300", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("ppl", "nll", "tokens", "ctx", "stride", "model", "text"):
        assert key in report
    assert report["tokens"] == 299 and report["ctx"] == 64 and report["stride"] == 32
    assert report["ppl"] > 1.0


def test_generate_streams_on_tiny_model(tiny_hf_folder, capsys):
    assert main(["generate", str(tiny_hf_folder), "--prompt", "The sea", "--max-new-tokens", "5",
                 "--temperature", "0.8", "--top-k", "20", "--seed", "3", "--chat"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(tiny_hf_folder), "--prompt", "The sea", "--max-new-tokens", "5",
                 "--temperature", "0.8", "--top-k", "20", "--seed", "3", "--chat"]) == 0
    assert capsys.readouterr().out == first and first.strip()


@pytest.mark.parametrize("args,message", [
    (["eval", "/no/such/model"], "neither a known name"),
    (["eval", "--text", "/no/such.txt"], "does not exist"),
    (["eval", "--ctx", "1"], "--ctx"),
    (["generate", "/no/such/model", "--prompt", "x"], "neither a known name"),
])
def test_errors_are_clean(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_skips_the_presets_training_unless_asked():
    from pathlib import Path

    from llmfab.cli import build_parser
    from llmfab.commands.demo import quantize_argv

    fast = quantize_argv(build_parser().parse_args(["demo", "tiny"]), Path("a"))
    trained = quantize_argv(build_parser().parse_args(["demo", "tiny", "--train"]), Path("a"))
    assert fast[fast.index("--qat-block-epochs") + 1] == "0" and fast[fast.index("--qat-steps") + 1] == "0"
    assert "--qat-block-epochs" not in trained and "--qat-steps" not in trained
