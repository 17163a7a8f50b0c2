"""The column sweep shared by SparseGPT and GPTQ (Optimal Brain Surgeon error compensation).

Columns of W are fixed one at a time (pruned to zero, quantized, or both). The error of column j,
divided by [U]_jj where H⁻¹ = UᵀU, is spread over the not-yet-fixed columns along row j of U, so
the layer output X Wᵀ moves as little as possible. Updates inside a block of columns are applied
eagerly; updates of later blocks are applied once per block (lazy batch updates).

Decisions that concern a group of columns (which 2 of 4 to keep, a quantization group's scale and
zero point) are taken when the sweep reaches the group's first column, from the group's current,
already-compensated values. Masks and groups always refer to consecutive columns of the original
order, also when act-order permutes the sweep.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from llmfab.errors import InputError
from llmfab.quant.hessian import inverse_hessian_cholesky
from llmfab.quant.sparse_index import check_2to4_in_features, check_2to4_mask
from llmfab.quant.weight_quant import (
    GroupQuantConfig,
    check_group_size,
    dequantize_codes,
    fit_group_params,
    quantize_to_codes,
)


@dataclass(frozen=True)
class ObsConfig:
    """Sweep settings: columns per lazy-update block, Hessian dampening, act-order.

    act_order sweeps columns in order of decreasing Hessian diagonal (largest input energy first).
    """

    blocksize: int = 128
    damp_ratio: float = 0.01
    act_order: bool = False

    def __post_init__(self) -> None:
        """Reject a non-positive block size or negative dampening."""
        if self.blocksize < 1:
            raise InputError(f"blocksize {self.blocksize} must be a positive number of columns, e.g. 128")
        if self.damp_ratio < 0:
            raise InputError(f"damp_ratio {self.damp_ratio} is negative; use e.g. 0.01")


@dataclass(frozen=True, eq=False)
class SweepResult:
    """What a sweep produced, in the original column order.

    weight: float32 ``[out, in]``, the compensated, pruned and/or dequantized weight.
    kept: bool ``[out, in]`` (True = kept); all True when nothing was pruned.
    codes: uint8 ``[out, in]`` quantization codes (0 at pruned positions) or None.
    scales, zeros: float32 ``[out, in/group_size]`` group parameters or None.
    unrounded: float32 ``[out, in]``, each column's compensated value just before it was rounded
        (0 at pruned positions): rounding it with the group parameters gives ``codes``, so it is
        the natural starting point for quantization-aware training.
    """

    weight: torch.Tensor
    kept: torch.Tensor
    codes: torch.Tensor | None
    scales: torch.Tensor | None
    zeros: torch.Tensor | None
    unrounded: torch.Tensor


@contextmanager
def one_thread():
    """Run torch on one thread inside the block: the column sweep issues thousands of tiny ops,
    for which extra threads only add synchronisation (measured 12x slower with 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def obs_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    config: ObsConfig,
    *,
    prune_2to4: bool = False,
    mask: torch.Tensor | None = None,
    quant: GroupQuantConfig | None = None,
    name: str = "weight",
) -> SweepResult:
    """Fix every column of ``weight`` with OBS compensation.

    Args:
        weight: float ``[out, in]``.
        hessian: float ``[in, in]``, 2 XᵀX / n of the layer's calibration inputs.
        config: block size, dampening, act-order.
        prune_2to4: choose a 2:4 mask during the sweep (saliency w² / [U]_jj²).
        mask: a given bool ``[out, in]`` 2:4 mask (True = kept); excludes prune_2to4.
        quant: group-wise quantization to apply to kept weights, or None.
        name: layer name for error messages.

    Returns:
        A :class:`SweepResult`.
    """
    if weight.dim() != 2:
        raise InputError(f"{name} has shape {tuple(weight.shape)}; pass a 2-D [out, in] weight")
    out, n = weight.shape
    if hessian.shape != (n, n):
        raise InputError(
            f"Hessian shape {tuple(hessian.shape)} does not match {name} with {n} input features; "
            "accumulate it from this layer's inputs"
        )
    if prune_2to4 and mask is not None:
        raise InputError("pass either prune_2to4=True or a fixed mask, not both")
    sparse = prune_2to4 or mask is not None
    if sparse:
        check_2to4_in_features(n, name)
    if mask is not None:
        check_2to4_mask(mask, f"mask of {name}")
        if mask.shape != weight.shape:
            raise InputError(f"mask shape {tuple(mask.shape)} differs from {name} shape {tuple(weight.shape)}")
    if quant is not None:
        check_group_size(n, quant.group_size, sparse=sparse, name=name)

    perm = torch.argsort(torch.diagonal(hessian), descending=True) if config.act_order else torch.arange(n)
    pos_of_col = torch.empty_like(perm)
    pos_of_col[perm] = torch.arange(n)
    u = inverse_hessian_cholesky(hessian[perm][:, perm], config.damp_ratio)
    w = weight.float()[:, perm].clone()
    kept = torch.ones(out, n, dtype=torch.bool) if mask is None else mask[:, perm].clone()
    codes = torch.zeros(out, n) if quant is not None else None
    unrounded = torch.zeros(out, n)
    n_groups = n // quant.group_size if quant is not None else 0
    scales, zeros = torch.zeros(out, n_groups), torch.zeros(out, n_groups)
    group_ready = torch.zeros(n_groups, dtype=torch.bool)
    mask_ready = torch.full((n // 4 if sparse else 0,), mask is not None, dtype=torch.bool)
    with one_thread():
        _sweep(w, u, kept, codes, unrounded, scales, zeros, group_ready, mask_ready, perm, pos_of_col,
               config.blocksize, quant, prune_2to4, sparse)
    return SweepResult(
        weight=w[:, pos_of_col],
        kept=kept[:, pos_of_col],
        codes=None if codes is None else codes[:, pos_of_col].to(torch.uint8),
        scales=scales if quant is not None else None,
        zeros=zeros if quant is not None else None,
        unrounded=unrounded[:, pos_of_col],
    )


def _sweep(w, u, kept, codes, unrounded, scales, zeros, group_ready, mask_ready, perm, pos_of_col,
           blocksize, quant, prune_2to4, sparse) -> None:
    """The column loop of :func:`obs_sweep`, updating its tensors in place."""
    out, n = w.shape

    for start in range(0, n, blocksize):
        stop = min(start + blocksize, n)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        u_block = u[start:stop, start:stop]

        def current(positions: torch.Tensor, done: int) -> torch.Tensor:
            """Compensated values ``[out, len]`` of not-yet-fixed columns at these positions."""
            values = torch.empty(out, len(positions))
            inside = (positions >= start) & (positions < stop)
            values[:, inside] = block[:, positions[inside] - start]
            later = positions[~inside]
            values[:, ~inside] = w[:, later] - errors[:, :done] @ u[start : start + done, later]
            return values

        for i in range(stop - start):
            col = int(perm[start + i])
            if quant is not None and not group_ready[col // quant.group_size]:
                g = col // quant.group_size
                positions = pos_of_col[g * quant.group_size : (g + 1) * quant.group_size]
                values = current(positions, i)
                if prune_2to4:
                    kept[:, positions] = _choose_2to4(values, torch.diagonal(u)[positions])
                    mask_ready[g * quant.group_size // 4 : (g + 1) * quant.group_size // 4] = True
                scale, zero = fit_group_params(values, quant, kept[:, positions] if sparse else None)
                scales[:, g], zeros[:, g] = scale, zero
                group_ready[g] = True
            elif prune_2to4 and not mask_ready[col // 4]:
                positions = pos_of_col[col // 4 * 4 : col // 4 * 4 + 4]
                kept[:, positions] = _choose_2to4(current(positions, i), torch.diagonal(u)[positions])
                mask_ready[col // 4] = True

            column = block[:, i]
            fixed = column
            if quant is not None:
                g = col // quant.group_size
                col_codes = quantize_to_codes(column.unsqueeze(1), scales[:, g], zeros[:, g], quant.max_code)
                fixed = dequantize_codes(col_codes, scales[:, g], zeros[:, g]).squeeze(1)
                codes[:, start + i] = torch.where(kept[:, start + i], col_codes.squeeze(1), 0.0)
            fixed = torch.where(kept[:, start + i], fixed, 0.0)
            unrounded[:, start + i] = torch.where(kept[:, start + i], column, 0.0)
            err = (column - fixed) / u_block[i, i]
            block[:, i:] -= err.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
            block[:, i] = fixed
            errors[:, i] = err
        w[:, start:stop] = block
        w[:, stop:] -= errors @ u[start:stop, stop:]


def _choose_2to4(values: torch.Tensor, u_diag: torch.Tensor) -> torch.Tensor:
    """Keep the 2 of every 4 columns with the largest OBS saliency w² / [U]_jj².

    values: float ``[out, 4k]`` current weights; u_diag: float ``[4k]``. Returns bool ``[out, 4k]``.
    """
    saliency = (values**2 / u_diag.unsqueeze(0) ** 2).reshape(values.shape[0], -1, 4)
    top = saliency.topk(2, dim=-1).indices
    kept = torch.zeros_like(saliency, dtype=torch.bool).scatter_(-1, top, True)
    return kept.reshape(values.shape)
