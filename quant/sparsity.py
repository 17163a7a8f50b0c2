"""2:4 semi-structured pruning: in every 4 consecutive input columns of a row keep 2.

Three ways to choose the mask, from cheapest to best:

- magnitude: keep the two largest |W|;
- Wanda: keep the two largest |W_ij| * ||X_j||_2 (weights times input-channel norms);
- SparseGPT: an OBS sweep over the columns with the layer Hessian, choosing each group by the
  saliency w² / [H⁻¹ Cholesky]_jj² and compensating the pruning error in later columns.

Masks are bool ``[out, in]`` tensors with True at kept weights. The compact index and the
kept-values form live in :mod:`llmfab.quant.sparse_index`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmfab.errors import InputError
from llmfab.quant.obs_sweep import ObsConfig, obs_sweep
from llmfab.quant.sparse_index import check_2to4_in_features


def mask_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Keep the 2 highest scores in each group of 4 consecutive columns.

    Args:
        scores: float ``[out, in]``, in a multiple of 4.

    Returns:
        bool ``[out, in]`` 2:4 mask (True = kept); ties go to the lower column index.
    """
    if scores.dim() != 2:
        raise InputError(f"scores have shape {tuple(scores.shape)}; pass a 2-D [out, in] tensor")
    check_2to4_in_features(scores.shape[1], "weight")
    groups = scores.reshape(scores.shape[0], -1, 4)
    # stable descending sort keeps the earlier column on ties, so the result is deterministic
    top = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :2]
    kept = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return kept.reshape(scores.shape)


def magnitude_2to4_mask(weight: torch.Tensor) -> torch.Tensor:
    """2:4 mask keeping the largest |W|: weight float ``[out, in]`` -> bool ``[out, in]``."""
    return mask_from_scores(weight.abs().float())


def wanda_2to4_mask(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """2:4 mask keeping the largest |W_ij| * ||X_j||_2.

    Args:
        weight: float ``[out, in]``.
        input_norms: float ``[in]``, the L2 norm of each input channel over the calibration tokens
            (see :func:`input_channel_norms`).

    Returns:
        bool ``[out, in]``.
    """
    if input_norms.shape != (weight.shape[-1],):
        raise InputError(
            f"input norms have shape {tuple(input_norms.shape)} but the weight has "
            f"{weight.shape[-1]} input features; pass one norm per input channel"
        )
    return mask_from_scores(weight.abs().float() * input_norms.float().unsqueeze(0))


def input_channel_norms(inputs: torch.Tensor) -> torch.Tensor:
    """L2 norm of each input channel: inputs float ``[..., in]`` -> float32 ``[in]``."""
    return inputs.reshape(-1, inputs.shape[-1]).float().norm(dim=0)


@dataclass(frozen=True, eq=False)
class PrunedWeight:
    """Result of a pruning pass: ``weight`` float32 ``[out, in]`` with zeros outside ``mask``
    (bool ``[out, in]``, True = kept)."""

    weight: torch.Tensor
    mask: torch.Tensor


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> PrunedWeight:
    """Zero the pruned weights without compensation: float ``[out, in]`` and bool ``[out, in]``."""
    if weight.shape != mask.shape:
        raise InputError(f"weight shape {tuple(weight.shape)} differs from mask shape {tuple(mask.shape)}")
    return PrunedWeight(weight=torch.where(mask, weight.float(), 0.0), mask=mask)


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, config: ObsConfig = ObsConfig(), name: str = "weight"
) -> PrunedWeight:
    """SparseGPT 2:4 pruning with OBS weight updates.

    Args:
        weight: float ``[out, in]``, in a multiple of 4.
        hessian: float ``[in, in]``, 2 XᵀX / n (see :class:`llmfab.quant.hessian.HessianAccumulator`).
        config: block size (columns per lazy update), dampening, act-order.
        name: layer name for error messages.

    Returns:
        :class:`PrunedWeight` with the updated float32 weight and its 2:4 mask.
    """
    result = obs_sweep(weight, hessian, config, prune_2to4=True, name=name)
    return PrunedWeight(weight=result.weight, mask=result.kept)
