"""The accuracy metrics the numerics and emulator benchmarks report (benchmarks/numerics_accuracy.py)."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from numerics_accuracy import float64_products, kl_sum, log_probs, nll_sum  # noqa: E402


def test_nll_sum_is_torch_cross_entropy():
    logits = np.random.default_rng(0).normal(size=(7, 50)) * 4
    targets = np.arange(7) * 3
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), reduction="sum").item()
    assert nll_sum(log_probs(logits), targets) == pytest.approx(expected, rel=1e-12)


def test_kl_sum_matches_its_definition_and_ignores_logit_shifts():
    rng = np.random.default_rng(1)
    p_logits, q_logits = rng.normal(size=(2, 5, 40)) * 3
    p, q = (np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in (p_logits, q_logits))
    assert kl_sum(log_probs(p_logits), log_probs(q_logits)) == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-10)
    assert kl_sum(log_probs(p_logits), log_probs(p_logits + 5.0)) == pytest.approx(0.0, abs=1e-12)
    assert kl_sum(log_probs(p_logits), log_probs(q_logits)) > 0


def test_float64_products_accumulates_in_float64_and_restores_linear():
    with torch.random.fork_rng():
        torch.manual_seed(2)
        x = torch.randn(16, 4096)
        layer = torch.nn.Linear(4096, 64)
    exact = (x.double() @ layer.weight.double().T + layer.bias.double()).float()
    plain = layer(x)
    with float64_products():
        accumulated = layer(x)
    assert accumulated.dtype == torch.float32
    assert torch.equal(accumulated, exact)
    assert not torch.equal(plain, exact)  # float32 accumulation rounds differently somewhere
    assert torch.allclose(plain, exact, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError), float64_products():
        raise RuntimeError("inside")
    assert torch.equal(layer(x), plain)
