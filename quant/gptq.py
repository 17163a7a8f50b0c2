"""GPTQ: group-wise weight quantization with OBS error compensation, dense or 2:4-sparse.

Each column is rounded with the group-wise quantizer of :mod:`llmfab.quant.weight_quant`; its
rounding error is compensated in the columns not yet quantized (see :mod:`llmfab.quant.obs_sweep`).
A group's scale and zero point are fitted when the sweep reaches the group, from its compensated
values. With a 2:4 mask, pruned weights are zero, carry no code and do not inform the fit.
:func:`sparsegpt_gptq` chooses the mask during the same sweep (SparseGPT's joint mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmfab.quant.obs_sweep import ObsConfig, SweepResult, obs_sweep
from llmfab.quant.sparse_index import compress_2to4, encode_2to4_mask
from llmfab.quant.weight_quant import GroupQuantConfig, QuantizedWeight, ZeroPoint, stored_zero_points


@dataclass(frozen=True, eq=False)
class GptqResult:
    """``quantized``: the codes, scales, zeros (and 2:4 index); ``weight``: float32 ``[out, in]``,
    exactly ``dequantize_groupwise(quantized)``; ``unrounded``: float32 ``[out, in]``, the
    compensated weights just before rounding (see SweepResult)."""

    quantized: QuantizedWeight
    weight: torch.Tensor
    unrounded: torch.Tensor | None = None


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    quant: GroupQuantConfig,
    config: ObsConfig = ObsConfig(),
    mask: torch.Tensor | None = None,
    name: str = "weight",
) -> GptqResult:
    """Quantize ``weight`` with GPTQ.

    Args:
        weight: float ``[out, in]``.
        hessian: float ``[in, in]``, 2 XᵀX / n of the layer inputs.
        quant: bits, group size, scale init.
        config: block size, dampening, act-order (off by default).
        mask: optional bool ``[out, in]`` 2:4 mask (True = kept). Weights outside it become zero
            (their removal is compensated too, as in SparseGPT) and get no codes.
        name: layer name for error messages.

    Returns:
        :class:`GptqResult`; with a mask, ``quantized.codes`` is ``[out, in/2]``.
    """
    result = obs_sweep(weight, hessian, config, mask=mask, quant=quant, name=name)
    return _to_result(result, quant, sparse=mask is not None)


def sparsegpt_gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    quant: GroupQuantConfig,
    config: ObsConfig = ObsConfig(),
    name: str = "weight",
) -> GptqResult:
    """Prune to 2:4 and quantize in one OBS sweep.

    When the sweep reaches a quantization group it picks the group's 2:4 patterns by OBS saliency,
    then fits scale and zero point to the kept weights only.

    Args and returns as :func:`gptq_quantize`; the mask is chosen here, codes are ``[out, in/2]``.
    """
    result = obs_sweep(weight, hessian, config, prune_2to4=True, quant=quant, name=name)
    return _to_result(result, quant, sparse=True)


def _to_result(result: SweepResult, quant: GroupQuantConfig, sparse: bool) -> GptqResult:
    """Pack a sweep's dense ``[out, in]`` codes (compressed to ``[out, in/2]`` under 2:4) and
    float32 group parameters into a :class:`GptqResult`."""
    codes = compress_2to4(result.codes, result.kept) if sparse else result.codes
    quantized = QuantizedWeight(
        codes=codes,
        scales=result.scales.to(quant.scale_dtype),
        zeros=stored_zero_points(result.zeros, quant),
        bits=quant.bits,
        group_size=quant.group_size,
        mask_codes=encode_2to4_mask(result.kept) if sparse else None,
        zero_halves=quant.zero_point is ZeroPoint.HALF_INTEGER,
    )
    return GptqResult(quantized=quantized, weight=result.weight, unrounded=result.unrounded)
