"""Sliding-window perplexity: window plan, agreement with a direct computation, input errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.perplexity import perplexity, read_text, windows


@pytest.mark.parametrize("n,ctx,stride", [(10, 4, 4), (10, 4, 2), (9, 9, 9), (100, 16, 5), (5, 8, 8)])
def test_every_token_but_the_first_is_scored_once(n, ctx, stride):
    plan = windows(n, ctx, stride)
    scored = [t for w in plan for t in range(w.end - w.scored, w.end)]
    assert w_in_bounds(plan, ctx)
    if stride == ctx:  # non-overlapping: each window's first token has no context
        assert len(scored) == n - len(plan)
    else:
        assert scored == list(range(1, n))
    assert len(set(scored)) == len(scored)


def w_in_bounds(plan, ctx):
    return all(0 < w.end - w.begin <= ctx and w.scored < w.end - w.begin for w in plan)


def test_matches_direct_nll():
    torch.manual_seed(0)
    table = torch.randn(50, 50)

    def bigram(ids):  # logits depend only on the previous token: windows cannot change them
        return table[ids]

    tokens = torch.randint(0, 50, (200,)).tolist()
    result = perplexity(bigram, tokens, ctx=32, stride=16)
    logp = torch.log_softmax(table, -1)
    direct = -sum(logp[a, b].item() for a, b in zip(tokens[:-1], tokens[1:])) / 199
    assert result.tokens == 199
    assert math.isclose(result.nll, direct, rel_tol=1e-6)
    assert math.isclose(result.ppl, math.exp(direct), rel_tol=1e-6)


@pytest.mark.parametrize("ctx,stride,match", [(1, 1, "--ctx"), (8, 0, "--stride"), (8, 9, "--stride")])
def test_bad_window_options(ctx, stride, match):
    with pytest.raises(InputError, match=match):
        windows(100, ctx, stride)


def test_bad_text(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_text(tmp_path / "latin1.txt")


def test_bundled_text_is_persuasion():
    path, text = read_text(None)
    assert path.name == "persuasion.txt" and "Sir Walter Elliot" in text[:2000]
