import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.hessian import HessianAccumulator, inverse_hessian_cholesky


def test_running_mean_equals_two_xtx_over_n_for_uneven_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 77, 12, generator=gen, dtype=torch.float64)
    acc = HessianAccumulator(12, dtype=torch.float64)
    acc.add_batch(x[0])  # [77, 12]
    acc.add_batch(x[1:, :5])  # [2, 5, 12]: leading axes are samples
    acc.add_batch(x[1:, 5:])
    flat = x.reshape(-1, 12)
    assert acc.samples == flat.shape[0]
    torch.testing.assert_close(acc.hessian, 2 * flat.T @ flat / flat.shape[0])


def test_large_offset_inputs_stay_accurate_in_float32():
    x = 1000.0 + torch.randn(4000, 4, generator=torch.Generator().manual_seed(1))
    acc = HessianAccumulator(4)
    for batch in x.split(7):
        acc.add_batch(batch)
    exact = 2 * x.double().T @ x.double() / x.shape[0]
    assert float(((acc.hessian.double() - exact).abs() / exact.abs()).max()) < 1e-5


def test_wrong_feature_count_and_empty_accumulator_are_rejected():
    acc = HessianAccumulator(8)
    with pytest.raises(InputError, match="8"):
        acc.add_batch(torch.zeros(3, 5))
    with pytest.raises(InputError, match="add_batch"):
        acc.hessian


def test_inverse_cholesky_factor_reconstructs_dampened_inverse():
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 2 * x.T @ x / 64
    u = inverse_hessian_cholesky(h, damp_ratio=0.01).double()
    assert torch.equal(u, torch.triu(u))
    damped = h + 0.01 * torch.diagonal(h).mean() * torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(damped), rtol=1e-5, atol=1e-6)


def test_dead_inputs_do_not_break_the_factorization():
    h = torch.diag(torch.tensor([2.0, 0.0, 1.0]))
    u = inverse_hessian_cholesky(h)
    assert torch.isfinite(u).all()
