import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.gptq import gptq_quantize, sparsegpt_gptq
from llmfab.quant.obs_sweep import ObsConfig, obs_sweep
from llmfab.quant.sparse_index import check_2to4_mask, decode_2to4_mask
from llmfab.quant.sparsity import input_channel_norms, sparsegpt_prune, wanda_2to4_mask
from llmfab.quant.weight_quant import (
    GroupQuantConfig,
    ZeroPoint,
    dequantize_groupwise,
    quantize_groupwise,
    quantize_to_codes,
)
from llmfab.tests.quant.correlated_data import correlated_layer

BLOCKS = ObsConfig(blocksize=32)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_round_to_nearest(bits):
    case = correlated_layer(seed=bits)
    quant = GroupQuantConfig(bits=bits, group_size=32)
    rtn = dequantize_groupwise(quantize_groupwise(case.weight, quant))
    gptq = gptq_quantize(case.weight, case.hessian, quant, BLOCKS)
    assert case.output_error(gptq.weight) < 0.85 * case.output_error(rtn)


def test_codes_are_in_range_and_weight_is_the_dequantized_codes():
    case = correlated_layer(seed=5)
    result = gptq_quantize(case.weight, case.hessian, GroupQuantConfig(bits=3, group_size=16), BLOCKS)
    q = result.quantized
    assert q.codes.dtype == torch.uint8 and q.codes.shape == case.weight.shape
    assert int(q.codes.max()) <= 7 and int(q.zeros.max()) <= 7
    assert q.scales.dtype == torch.float16 and q.scales.shape == (48, 6)
    assert torch.equal(result.weight, dequantize_groupwise(q))


def test_act_order_keeps_groups_consecutive_and_beats_rtn():
    case = correlated_layer(seed=6)
    quant = GroupQuantConfig(bits=2, group_size=32)
    result = gptq_quantize(case.weight, case.hessian, quant, ObsConfig(blocksize=32, act_order=True))
    assert torch.equal(result.weight, dequantize_groupwise(result.quantized))
    rtn = dequantize_groupwise(quantize_groupwise(case.weight, quant))
    assert case.output_error(result.weight) < case.output_error(rtn)


def test_lazy_block_updates_do_not_change_gptq():
    case = correlated_layer(seed=7, out_features=16, in_features=64)
    quant = GroupQuantConfig(bits=4, group_size=16)
    small = gptq_quantize(case.weight, case.hessian, quant, ObsConfig(blocksize=8))
    whole = gptq_quantize(case.weight, case.hessian, quant, ObsConfig(blocksize=64))
    assert (small.quantized.codes == whole.quantized.codes).float().mean() > 0.99
    assert case.output_error(small.weight) == pytest.approx(case.output_error(whole.weight), rel=1e-2)


def test_masked_positions_are_exactly_zero_and_uncoded():
    case = correlated_layer(seed=8)
    mask = wanda_2to4_mask(case.weight, input_channel_norms(case.inputs))
    quant = GroupQuantConfig(bits=2, group_size=32)
    result = gptq_quantize(case.weight, case.hessian, quant, BLOCKS, mask=mask)
    assert (result.weight[~mask] == 0).all()
    assert result.quantized.codes.shape == (48, 48)
    assert torch.equal(decode_2to4_mask(result.quantized.mask_codes), mask)
    assert torch.equal(result.weight, dequantize_groupwise(result.quantized))
    rtn = dequantize_groupwise(quantize_groupwise(case.weight, quant, mask=mask))
    assert case.output_error(result.weight) < case.output_error(rtn)


def test_joint_prune_and_quantize_beats_prune_then_round():
    case = correlated_layer(seed=9)
    quant = GroupQuantConfig(bits=3, group_size=32)
    joint = sparsegpt_gptq(case.weight, case.hessian, quant, BLOCKS)
    mask = decode_2to4_mask(joint.quantized.mask_codes)
    check_2to4_mask(mask)
    assert (joint.weight[~mask] == 0).all()
    assert torch.equal(joint.weight, dequantize_groupwise(joint.quantized))
    pruned = sparsegpt_prune(case.weight, case.hessian, BLOCKS)
    prune_then_round = dequantize_groupwise(quantize_groupwise(pruned.weight, quant, mask=pruned.mask))
    assert case.output_error(joint.weight) < case.output_error(prune_then_round)


def test_mask_and_joint_pruning_are_exclusive_and_shapes_are_checked():
    case = correlated_layer(seed=0, out_features=8, in_features=32, samples=64)
    quant = GroupQuantConfig(bits=2, group_size=16)
    with pytest.raises(InputError, match="Hessian shape"):
        gptq_quantize(case.weight, torch.eye(16), quant)
    wide_mask = torch.tensor([True, True, False, False]).repeat(8, 16)  # [8, 64], valid 2:4
    with pytest.raises(InputError, match="mask shape"):
        gptq_quantize(case.weight, case.hessian, quant, mask=wide_mask)
    with pytest.raises(InputError, match="either prune_2to4"):
        obs_sweep(case.weight, case.hessian, ObsConfig(), prune_2to4=True, mask=wide_mask[:, :32])


def test_half_integer_zero_points_work_in_the_joint_sweep():
    case = correlated_layer(seed=10)
    quant = GroupQuantConfig(bits=2, group_size=32, zero_point=ZeroPoint.HALF_INTEGER)
    joint = sparsegpt_gptq(case.weight, case.hessian, quant, BLOCKS)
    assert joint.quantized.zero_halves and int(joint.quantized.zeros.max()) <= 6
    assert torch.equal(joint.weight, dequantize_groupwise(joint.quantized))
    integer = sparsegpt_gptq(case.weight, case.hessian, GroupQuantConfig(bits=2, group_size=32), BLOCKS)
    assert case.output_error(joint.weight) < case.output_error(integer.weight)


@pytest.mark.parametrize("prune", [False, True])
def test_unrounded_weights_round_to_the_codes(prune):
    """The pre-rounding weights (QAT's starting point) give back the sweep's codes exactly."""
    case = correlated_layer(seed=5)
    quant = GroupQuantConfig(bits=2, group_size=16)
    result = obs_sweep(case.weight, case.hessian, ObsConfig(), prune_2to4=prune, quant=quant)
    out = case.weight.shape[0]
    groups = result.unrounded.reshape(out, -1, quant.group_size)
    codes = quantize_to_codes(groups, result.scales, result.zeros, quant.max_code).reshape(out, -1)
    assert torch.equal(torch.where(result.kept, codes, 0.0).to(torch.uint8), result.codes)
    assert torch.all(result.unrounded[~result.kept] == 0)
