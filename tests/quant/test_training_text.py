"""The training text shipped with llmfab: what it holds, how it is rebuilt, when QAT uses it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llmfab.errors import InputError
from llmfab.quant.calibrate import default_calibration_text, default_training_text
from llmfab.quant.qat import training_tokens
from llmfab.quant.tokenizer import Tokenizer
from llmfab.tests.quant.tiny_quantized import tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"


def excerpt_tool():
    spec = importlib.util.spec_from_file_location("make_training_excerpt", ROOT / "tools" / "make_training_excerpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_folder):
    return Tokenizer.from_hf_folder(tiny_hf_folder)


def test_bundled_training_text_samples_four_novels_and_never_the_evaluation_text():
    text = default_training_text().read_text(encoding="utf-8")
    assert text.startswith("EMMA") and 300_000 < len(text) < 450_000
    assert "Sir Walter Elliot" not in text  # persuasion.txt, the evaluation text
    for name in ("Elizabeth Bennet", "Fanny Price", "Elinor", "Emma Woodhouse"):
        assert name in text, name


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"needs the corpora folder {CORPORA} (../shared/corpora)")
def test_bundled_training_text_is_what_the_tool_builds_from_the_corpora():
    assert excerpt_tool().training_excerpt(CORPORA) == default_training_text().read_text(encoding="utf-8")


def test_passages_start_at_paragraphs_and_spread_over_the_text():
    tool = excerpt_tool()
    paragraphs = [f"Paragraph {i} " + "word " * 40 for i in range(200)]
    text = "\n\n".join(paragraphs)
    out = tool.passages(text, chunks=5, chunk_chars=1_000)
    assert len(out) == 5 and out[0].startswith("Paragraph 0 ") and out[-1].endswith(paragraphs[-1].strip())
    assert all(p.startswith("Paragraph ") and len(p) >= 1_000 for p in out)
    firsts = [int(p.split()[1]) for p in out]
    assert firsts == sorted(firsts) and firsts[2] in range(90, 110)
    with pytest.raises(ValueError, match="too short"):
        tool.passages("short", chunks=2, chunk_chars=10)


def test_tool_names_a_missing_corpora_folder(tmp_path, capsys):
    assert excerpt_tool().main(["--corpora", str(tmp_path), "-o", str(tmp_path / "out.txt")]) == 2
    assert "emma.txt is missing; pass --corpora DIR" in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()


def test_training_uses_qat_texts_then_calibration_texts_then_the_bundled_text(tokenizer, tmp_path):
    calib, qat = tmp_path / "calib.txt", tmp_path / "qat.txt"
    calib.write_text("The calibration text. " * 50)
    qat.write_text("The training text. " * 50)
    bundled = tokenizer.encode(default_training_text().read_text(encoding="utf-8"))
    assert training_tokens(tokenizer, tiny_recipe("w2a8kv4")) == bundled
    assert training_tokens(tokenizer, tiny_recipe("w2a8kv4", calib_texts=[str(calib)])) == tokenizer.encode(calib.read_text())
    both = tiny_recipe("w2a8kv4", calib_texts=[str(calib)], qat_texts=[str(qat)])
    assert training_tokens(tokenizer, both) == tokenizer.encode(qat.read_text())
    with pytest.raises(InputError, match="--qat-text .*missing.txt does not exist"):
        training_tokens(tokenizer, tiny_recipe("w2a8kv4", qat_texts=[str(tmp_path / "missing.txt")]))


def test_wider_weights_train_on_the_calibration_excerpt_by_default(tokenizer):
    """w4a8kv4 met its target on the Emma excerpt (1.092) and missed it on the four-novel text (1.1005)."""
    emma = tokenizer.encode(default_calibration_text().read_text(encoding="utf-8"))
    assert training_tokens(tokenizer, tiny_recipe("w4a8kv4")) == emma
    assert training_tokens(tokenizer, tiny_recipe("accllm")) != emma
