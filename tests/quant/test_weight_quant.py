import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.sparsity import magnitude_2to4_mask
from llmfab.quant.sparse_index import compress_2to4, decode_2to4_mask
from llmfab.quant.weight_quant import (
    GroupQuantConfig,
    ScaleInit,
    ZeroPoint,
    dequantize_groupwise,
    fit_group_params,
    quantize_groupwise,
)


def _weight(seed: int = 0, out: int = 16, inp: int = 128) -> torch.Tensor:
    return 0.05 * torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def _per_weight_scale(quantized, columns_per_code: int) -> torch.Tensor:
    return quantized.scales.float().repeat_interleave(columns_per_code, dim=1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_minmax_round_trip_error_is_within_half_a_step(bits):
    weight = _weight()
    config = GroupQuantConfig(bits=bits, group_size=32, init=ScaleInit.MINMAX)
    quantized = quantize_groupwise(weight, config)
    assert quantized.codes.dtype == torch.uint8 and quantized.codes.shape == (16, 128)
    assert int(quantized.codes.max()) <= 2**bits - 1
    assert int(quantized.zeros.max()) <= 2**bits - 1
    assert quantized.scales.dtype == torch.float16 and quantized.scales.shape == (16, 4)
    scale = _per_weight_scale(quantized, 32)
    # half a step, plus the float16 rounding of the scale accumulated over the code range
    bound = (0.5 + (2**bits - 1) / 1024) * scale
    assert ((dequantize_groupwise(quantized) - weight).abs() <= bound).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_clip_search_is_never_worse_and_helps_at_two_bits(bits):
    weight = _weight(seed=1, inp=256)
    errors = {}
    for init in ScaleInit:
        quantized = quantize_groupwise(weight, GroupQuantConfig(bits=bits, group_size=64, init=init))
        errors[init] = float((dequantize_groupwise(quantized) - weight).pow(2).sum())
    assert errors[ScaleInit.CLIP_SEARCH] <= errors[ScaleInit.MINMAX]
    if bits == 2:
        assert errors[ScaleInit.CLIP_SEARCH] < 0.8 * errors[ScaleInit.MINMAX]


def test_all_zero_group_dequantizes_to_zero():
    weight = torch.zeros(2, 8)
    weight[1, 4:] = torch.tensor([0.5, -0.25, 0.0, 1.0])
    restored = dequantize_groupwise(quantize_groupwise(weight, GroupQuantConfig(bits=2, group_size=4)))
    assert (restored[0] == 0).all() and (restored[1, :4] == 0).all()


def test_sparse_quantization_codes_only_kept_weights():
    weight = _weight(seed=2)
    mask = magnitude_2to4_mask(weight)
    config = GroupQuantConfig(bits=2, group_size=32, init=ScaleInit.MINMAX)
    quantized = quantize_groupwise(weight, config, mask=mask)
    assert quantized.is_sparse and quantized.codes.shape == (16, 64) and quantized.codes_per_group == 16
    assert quantized.scales.shape == (16, 4) and quantized.in_features == 128
    assert torch.equal(decode_2to4_mask(quantized.mask_codes), mask)
    restored = dequantize_groupwise(quantized)
    assert (restored[~mask] == 0).all()
    scale = _per_weight_scale(quantized, 32)
    assert ((restored - weight).abs()[mask] <= (0.5 + 3 / 1024) * scale[mask]).all()


def test_pruned_weights_do_not_influence_the_sparse_fit():
    weight = _weight(seed=3)
    mask = magnitude_2to4_mask(weight)
    noisy = torch.where(mask, weight, 100.0)  # huge values at pruned positions
    config = GroupQuantConfig(bits=2, group_size=32)
    a, b = quantize_groupwise(weight, config, mask=mask), quantize_groupwise(noisy, config, mask=mask)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)


def test_sparse_quantization_equals_quantizing_kept_values_with_half_groups():
    weight = _weight(seed=4)
    mask = magnitude_2to4_mask(weight)
    sparse = quantize_groupwise(weight, GroupQuantConfig(bits=3, group_size=32), mask=mask)
    kept = compress_2to4(weight, mask)
    dense = quantize_groupwise(kept, GroupQuantConfig(bits=3, group_size=16))
    assert torch.equal(sparse.codes, dense.codes) and torch.equal(sparse.scales, dense.scales)
    assert torch.equal(sparse.zeros, dense.zeros)


def test_fit_group_params_ignores_entries_outside_kept():
    values = torch.tensor([[1.0, -1.0, 50.0, -50.0]])
    kept = torch.tensor([[True, True, False, False]])
    scale, zero = fit_group_params(values, GroupQuantConfig(bits=2, init=ScaleInit.MINMAX), kept)
    assert float(scale) == pytest.approx(2 / 3, rel=1e-3) and float(zero) in (1.0, 2.0)


def test_group_size_that_does_not_divide_is_rejected_with_suggestions():
    with pytest.raises(InputError, match=r"q_proj has 576 input features.*group size 128.*64"):
        quantize_groupwise(torch.zeros(4, 576), GroupQuantConfig(group_size=128), name="q_proj")


def test_sparse_group_size_must_hold_whole_2to4_groups():
    weight = torch.randn(2, 12)
    with pytest.raises(InputError, match="multiple of 4"):
        quantize_groupwise(weight, GroupQuantConfig(group_size=6), mask=magnitude_2to4_mask(weight))


def test_unsupported_bits_are_rejected():
    with pytest.raises(InputError, match="weight bits 5"):
        GroupQuantConfig(bits=5)


def test_half_integer_zero_point_serves_kept_2to4_weights_better_at_two_bits():
    weight = _weight(seed=5, out=32, inp=256)
    mask = magnitude_2to4_mask(weight)
    errors = {}
    for zero_point in ZeroPoint:
        config = GroupQuantConfig(bits=2, group_size=64, zero_point=zero_point)
        quantized = quantize_groupwise(weight, config, mask=mask)
        restored = dequantize_groupwise(quantized)
        assert (restored[~mask] == 0).all()
        errors[zero_point] = float((restored - weight)[mask].pow(2).sum())
    assert errors[ZeroPoint.HALF_INTEGER] < 0.9 * errors[ZeroPoint.INTEGER]


def test_half_integer_zero_points_are_stored_doubled_and_round_trip_within_half_a_step():
    weight = _weight(seed=6)
    config = GroupQuantConfig(bits=3, group_size=32, init=ScaleInit.MINMAX, zero_point=ZeroPoint.HALF_INTEGER)
    quantized = quantize_groupwise(weight, config)
    assert quantized.zero_halves and int(quantized.zeros.max()) <= 14
    assert torch.equal(quantized.zero_points, quantized.zeros.float() / 2)
    assert bool((quantized.zeros % 2 == 1).any())  # some groups do use a half step
    scale = _per_weight_scale(quantized, 32)
    assert ((dequantize_groupwise(quantized) - weight).abs() <= (0.5 + 7 / 1024) * scale).all()
