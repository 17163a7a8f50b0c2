"""`llmfab ir check` on the shipped examples, TeAAL YAML and bad input."""

import json

from llmfab.cli import main
from llmfab.compiler.cascade_files import EXAMPLES


def test_check_three_pass_json(capsys):
    assert main(["ir", "check", str(EXAMPLES / "attention_3pass.cascade"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passes"] == 3 and report["passes_per_rank"]["M"] == 3
    assert report["einsums"][0] == "QK[m, p] = Q[e, p] * K[e, m] * 0.5 reduce e: sum"
    assert len(report["einsums"]) == 6 and report["outputs"] == ["AV"]


def test_check_one_pass_text(capsys):
    assert main(["ir", "check", str(EXAMPLES / "attention_1pass.cascade")]) == 0
    out = capsys.readouterr().out
    assert "valid cascade" in out and "passes: 1" in out and "  M: 1" in out
    assert "AV[F, P] : float32  (output)" in out


def test_check_one_pass_json(capsys):
    assert main(["ir", "check", str(EXAMPLES / "attention_1pass.cascade"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passes"] == 1 and len(report["einsums"]) == 12


def test_check_teaal_yaml(tmp_path, capsys):
    spec = tmp_path / "gemm.yaml"
    spec.write_text("einsum:\n  declaration: {A: [K, M], B: [K, N], Z: [M, N]}\n"
                    "  expressions: ['Z[m, n] = A[k, m] * B[k, n]']\n")
    assert main(["ir", "check", str(spec), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["einsums"] == ["Z[m, n] = A[k, m] * B[k, n] reduce k: sum"] and report["passes"] == 1


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["ir", "check", str(tmp_path / "missing.cascade")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.cascade"
    bad.write_text("rank M = 2\ntensor A[M]\nB[m] = A[m]\n")
    assert main(["ir", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmfab ir: error: Einsum B[m] writes tensor B, which is not declared")
    bad.write_text("rank M = 2\ntensor A[M\n")
    assert main(["ir", "check", str(bad)]) == 2
    assert f"{bad}:2:11: expected ']'" in capsys.readouterr().err
