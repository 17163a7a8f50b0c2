import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.obs_sweep import ObsConfig
from llmfab.quant.sparse_index import check_2to4_mask
from llmfab.quant.sparsity import (
    apply_mask,
    input_channel_norms,
    magnitude_2to4_mask,
    mask_from_scores,
    sparsegpt_prune,
    wanda_2to4_mask,
)
from llmfab.tests.quant.correlated_data import correlated_layer


def _assert_exactly_2to4(mask: torch.Tensor) -> None:
    assert mask.dtype == torch.bool
    assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    check_2to4_mask(mask)


def test_mask_from_scores_keeps_the_two_largest():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, 1.0, 2.0, 0.0]])
    assert mask_from_scores(scores).tolist() == [[False, True, True, False, True, False, True, False]]


def test_all_masks_are_exactly_2to4():
    case = correlated_layer(seed=1)
    _assert_exactly_2to4(magnitude_2to4_mask(case.weight))
    _assert_exactly_2to4(wanda_2to4_mask(case.weight, input_channel_norms(case.inputs)))
    pruned = sparsegpt_prune(case.weight, case.hessian)
    _assert_exactly_2to4(pruned.mask)
    assert (pruned.weight[~pruned.mask] == 0).all()


def test_wanda_weighs_magnitudes_by_input_norms():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(wanda_2to4_mask(weight, torch.ones(4)), magnitude_2to4_mask(weight))
    flipped = wanda_2to4_mask(weight, torch.tensor([10.0, 10.0, 1.0, 1.0]))
    assert flipped.tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("seed", [0, 1])
def test_sparsegpt_beats_wanda_beats_magnitude_on_output_error(seed):
    case = correlated_layer(seed=seed)
    magnitude = case.output_error(apply_mask(case.weight, magnitude_2to4_mask(case.weight)).weight)
    wanda_mask = wanda_2to4_mask(case.weight, input_channel_norms(case.inputs))
    wanda = case.output_error(apply_mask(case.weight, wanda_mask).weight)
    sparsegpt = case.output_error(sparsegpt_prune(case.weight, case.hessian, ObsConfig(blocksize=32)).weight)
    assert sparsegpt < 0.9 * wanda
    assert wanda < magnitude


def test_lazy_block_updates_do_not_change_sparsegpt():
    case = correlated_layer(seed=2, out_features=16, in_features=64)
    small = sparsegpt_prune(case.weight, case.hessian, ObsConfig(blocksize=8))
    whole = sparsegpt_prune(case.weight, case.hessian, ObsConfig(blocksize=64))
    assert (small.mask == whole.mask).float().mean() > 0.99
    assert case.output_error(small.weight) == pytest.approx(case.output_error(whole.weight), rel=1e-3)


def test_sparsegpt_act_order_still_gives_2to4():
    case = correlated_layer(seed=3, out_features=16, in_features=64)
    pruned = sparsegpt_prune(case.weight, case.hessian, ObsConfig(blocksize=16, act_order=True))
    _assert_exactly_2to4(pruned.mask)
    wanda = apply_mask(case.weight, wanda_2to4_mask(case.weight, input_channel_norms(case.inputs)))
    assert case.output_error(pruned.weight) < case.output_error(wanda.weight)


@pytest.mark.parametrize("make_mask", ["magnitude", "wanda", "sparsegpt"])
def test_in_features_not_multiple_of_four_is_rejected(make_mask):
    weight = torch.randn(4, 10)
    with pytest.raises(InputError, match="10 input features.*multiple of 4"):
        if make_mask == "magnitude":
            magnitude_2to4_mask(weight)
        elif make_mask == "wanda":
            wanda_2to4_mask(weight, torch.ones(10))
        else:
            sparsegpt_prune(weight, torch.eye(10))


def test_wanda_rejects_norms_of_wrong_length():
    with pytest.raises(InputError, match="one norm per input channel"):
        wanda_2to4_mask(torch.randn(2, 8), torch.ones(4))


def test_sparsegpt_rejects_hessian_of_another_layer():
    with pytest.raises(InputError, match="Hessian shape"):
        sparsegpt_prune(torch.randn(2, 8), torch.eye(4))
