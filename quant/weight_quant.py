"""Group-wise asymmetric integer quantization of weight matrices.

A weight matrix ``[out, in]`` is cut into groups of ``group_size`` consecutive input columns. Each
(row, group) has a float scale ``s`` and a zero point ``z`` in [0, 2**bits - 1], an integer by
default; a weight is stored as a code ``q`` in [0, 2**bits - 1] and means ``s * (q - z)``. Codes
are ``clamp(round(w / s) + z, 0, 2**bits - 1)`` with round-half-to-even.

The representable range is widened to contain 0, so ``z`` always fits in ``bits`` bits. Scales are
rounded to ``scale_dtype`` (float16 by default) before codes are chosen, so the stored scale is the
one the codes were fitted to.

Under a 2:4 mask the pruned zeros live in the mask, not in the codes: only kept weights get codes,
and a group of ``group_size`` input columns holds ``group_size / 2`` kept weights per row whose
statistics alone set the scale and zero point.

An integer zero point makes 0 one of the levels. Kept 2:4 weights are the larger half and rarely
sit at 0, so ``ZeroPoint.HALF_INTEGER`` offers zero points in steps of 1/2 (stored doubled), which
can centre the levels on the data instead (e.g. -1.5s, -0.5s, 0.5s, 1.5s at 2 bits).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from llmfab.errors import InputError
from llmfab.quant.sparse_index import (
    compress_2to4,
    decode_2to4_mask,
    decompress_2to4,
    encode_2to4_mask,
)

SUPPORTED_WEIGHT_BITS = (2, 3, 4, 8)


class ScaleInit(enum.Enum):
    """How a group's scale and zero point are chosen."""

    MINMAX = "minmax"  # the range spans the group's smallest and largest value
    CLIP_SEARCH = "clip_search"  # the range is shrunk by the ratio with the least squared error


class ZeroPoint(enum.Enum):
    """Resolution of the zero point z in ``s * (q - z)``."""

    INTEGER = "integer"  # z in {0, 1, ..., 2**bits - 1}; stored as is
    HALF_INTEGER = "half_integer"  # z in {0, 1/2, ..., 2**bits - 1}; stored as 2z (bits + 1 wide)


@dataclass(frozen=True)
class GroupQuantConfig:
    """Settings of group-wise weight quantization.

    ``group_size`` counts input columns of the dense matrix; under a 2:4 mask each group holds
    ``group_size / 2`` kept weights per row. ``clip_candidates`` ratios are tried, evenly spaced
    from 1.0 down to ``min_clip_ratio``, when ``init`` is CLIP_SEARCH.
    """

    bits: int = 2
    group_size: int = 64
    init: ScaleInit = ScaleInit.CLIP_SEARCH
    clip_candidates: int = 40
    min_clip_ratio: float = 0.2
    scale_dtype: torch.dtype = torch.float16
    zero_point: ZeroPoint = ZeroPoint.INTEGER

    def __post_init__(self) -> None:
        """Reject unsupported bit widths, group sizes and search settings."""
        if self.bits not in SUPPORTED_WEIGHT_BITS:
            raise InputError(f"weight bits {self.bits} is not supported; use one of {SUPPORTED_WEIGHT_BITS}")
        if self.group_size < 1:
            raise InputError(f"group size {self.group_size} must be a positive number of input columns, e.g. 64")
        if self.clip_candidates < 1:
            raise InputError(f"clip_candidates {self.clip_candidates} must be >= 1, e.g. 40")
        if not 0.0 < self.min_clip_ratio <= 1.0:
            raise InputError(f"min_clip_ratio {self.min_clip_ratio} must lie in (0, 1], e.g. 0.2")
        if not self.scale_dtype.is_floating_point:
            raise InputError(f"scale dtype {self.scale_dtype} must be a float dtype, e.g. torch.float16")

    @property
    def max_code(self) -> int:
        """Largest code, 2**bits - 1."""
        return (1 << self.bits) - 1


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A group-wise quantized weight matrix, dense or 2:4-sparse.

    codes: uint8 ``[out, in]`` (dense) or ``[out, in/2]`` (kept weights in column order, 2:4).
    scales: ``scale_dtype`` ``[out, in/group_size]``.
    zeros: uint8 ``[out, in/group_size]``, zero points in [0, 2**bits - 1]; when
        ``zero_halves`` is True they are stored doubled (2z in [0, 2**(bits+1) - 2]).
    mask_codes: None (dense) or uint8 ``[out, in/4]`` 2:4 pattern codes (see sparse_index).
    group_size: input columns of the dense matrix per group.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    mask_codes: torch.Tensor | None = None
    zero_halves: bool = False

    @property
    def zero_points(self) -> torch.Tensor:
        """Zero points z as float32 ``[out, in/group_size]``."""
        return self.zeros.float() / 2 if self.zero_halves else self.zeros.float()

    @property
    def is_sparse(self) -> bool:
        """True when the weight carries a 2:4 mask."""
        return self.mask_codes is not None

    @property
    def in_features(self) -> int:
        """Input columns of the dense matrix."""
        return self.codes.shape[1] * (2 if self.is_sparse else 1)

    @property
    def codes_per_group(self) -> int:
        """Codes per (row, group): group_size, or group_size / 2 under 2:4."""
        return self.group_size // 2 if self.is_sparse else self.group_size


def check_group_size(in_features: int, group_size: int, sparse: bool = False, name: str = "weight") -> None:
    """Raise InputError unless groups of ``group_size`` columns tile ``in_features`` (and 2:4 groups)."""
    if in_features % group_size:
        divisors = [d for d in range(4, min(in_features, 256) + 1, 4) if in_features % d == 0]
        raise InputError(
            f"{name} has {in_features} input features, not a multiple of the group size "
            f"{group_size}; choose a group size that divides it, e.g. one of {divisors[-6:] or [in_features]}"
        )
    if sparse and group_size % 4:
        raise InputError(
            f"group size {group_size} for the 2:4-sparse {name} is not a multiple of 4; a group "
            "must hold whole 2:4 groups, choose e.g. 32 or 64"
        )


def fit_group_params(
    values: torch.Tensor, config: GroupQuantConfig, kept: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose scale and zero point for each group.

    Args:
        values: float ``[..., size]``, one group per leading index (e.g. ``[out, groups, size]``).
        config: bits, init method and scale dtype.
        kept: optional bool ``[..., size]``; only True entries inform the fit (2:4 kept weights).

    Returns:
        ``(scale, zero)``: float32 ``[...]`` holding values exactly representable in
        ``config.scale_dtype``, and float32 ``[...]`` zero points in [0, 2**bits - 1] (integers,
        or multiples of 1/2 with ZeroPoint.HALF_INTEGER).
    """
    values = values.float()
    if kept is None:
        lo, hi = values.amin(dim=-1), values.amax(dim=-1)
    else:
        lo = torch.where(kept, values, torch.inf).amin(dim=-1)
        hi = torch.where(kept, values, -torch.inf).amax(dim=-1)
    lo = lo.clamp(max=0.0)  # also maps +inf (no kept entry) to 0
    hi = hi.clamp(min=0.0)
    if config.init is ScaleInit.MINMAX:
        return _params_for_range(lo, hi, config)
    best_scale, best_zero = _params_for_range(lo, hi, config)
    best_err = _group_sq_error(values, best_scale, best_zero, config, kept)
    for ratio in torch.linspace(1.0, config.min_clip_ratio, config.clip_candidates)[1:].tolist():
        scale, zero = _params_for_range(lo * ratio, hi * ratio, config)
        err = _group_sq_error(values, scale, zero, config, kept)
        better = err < best_err
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
        best_err = torch.where(better, err, best_err)
    return best_scale, best_zero


def quantize_to_codes(values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, max_code: int) -> torch.Tensor:
    """Codes ``clamp(round(values / scale + frac(zero)) + floor(zero), 0, max_code)``.

    For an integer zero point this is ``clamp(round(values / scale) + zero, 0, max_code)``.

    Args:
        values: float ``[..., size]``.
        scale, zero: float32 ``[...]`` (broadcast over the last axis of values).
        max_code: 2**bits - 1.

    Returns:
        float32 ``[..., size]`` holding integers in [0, max_code].
    """
    whole = torch.floor(zero).unsqueeze(-1)
    frac = zero.unsqueeze(-1) - whole
    return (torch.round(values.float() / scale.unsqueeze(-1) + frac) + whole).clamp(0, max_code)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Values ``scale * (codes - zero)``: codes ``[..., size]`` (any dtype), scale/zero ``[...]`` -> float32."""
    return scale.float().unsqueeze(-1) * (codes.float() - zero.float().unsqueeze(-1))


def quantize_groupwise(
    weight: torch.Tensor,
    config: GroupQuantConfig,
    mask: torch.Tensor | None = None,
    name: str = "weight",
) -> QuantizedWeight:
    """Round-to-nearest group-wise quantization (no error compensation).

    Args:
        weight: float ``[out, in]``.
        config: bit width, group size, init method.
        mask: optional bool ``[out, in]`` 2:4 mask (True = kept); pruned weights get no codes.
        name: the layer's name, used in error messages.

    Returns:
        A :class:`QuantizedWeight`; with a mask its codes are ``[out, in/2]``.
    """
    if weight.dim() != 2:
        raise InputError(f"{name} has shape {tuple(weight.shape)}; pass a 2-D [out, in] weight matrix")
    check_group_size(weight.shape[1], config.group_size, sparse=mask is not None, name=name)
    stored = weight if mask is None else compress_2to4(weight, mask)
    per_group = config.group_size if mask is None else config.group_size // 2
    groups = stored.float().reshape(stored.shape[0], -1, per_group)
    scale, zero = fit_group_params(groups, config)
    codes = quantize_to_codes(groups, scale, zero, config.max_code)
    return QuantizedWeight(
        codes=codes.reshape(stored.shape).to(torch.uint8),
        scales=scale.to(config.scale_dtype),
        zeros=stored_zero_points(zero, config),
        bits=config.bits,
        group_size=config.group_size,
        mask_codes=None if mask is None else encode_2to4_mask(mask),
        zero_halves=config.zero_point is ZeroPoint.HALF_INTEGER,
    )


def stored_zero_points(zero: torch.Tensor, config: GroupQuantConfig) -> torch.Tensor:
    """Zero points float32 ``[...]`` -> uint8 ``[...]`` as stored (doubled for HALF_INTEGER)."""
    return (zero * 2 if config.zero_point is ZeroPoint.HALF_INTEGER else zero).to(torch.uint8)


def dequantize_groupwise(quantized: QuantizedWeight) -> torch.Tensor:
    """Reconstruct the float32 weight ``[out, in]``, with exact zeros at 2:4-pruned positions."""
    out = quantized.codes.shape[0]
    groups = quantized.codes.reshape(out, -1, quantized.codes_per_group)
    values = dequantize_codes(groups, quantized.scales, quantized.zero_points).reshape(quantized.codes.shape)
    if quantized.mask_codes is None:
        return values
    return decompress_2to4(values, decode_2to4_mask(quantized.mask_codes))


def _params_for_range(
    lo: torch.Tensor, hi: torch.Tensor, config: GroupQuantConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping [lo, hi] (lo <= 0 <= hi) onto [0, max_code]."""
    tiny = torch.finfo(config.scale_dtype).tiny
    scale = ((hi - lo) / config.max_code).clamp(min=tiny)
    scale = scale.to(config.scale_dtype).float()
    steps = 2.0 if config.zero_point is ZeroPoint.HALF_INTEGER else 1.0
    zero = (torch.round(-lo / scale * steps) / steps).clamp(0, config.max_code)
    return scale, zero


def _group_sq_error(
    values: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    config: GroupQuantConfig,
    kept: torch.Tensor | None,
) -> torch.Tensor:
    """Squared rounding error per group: values ``[..., size]``, scale/zero ``[...]`` -> float32 ``[...]``,
    summed over kept entries only when ``kept`` (bool ``[..., size]``) is given."""
    codes = quantize_to_codes(values, scale, zero, config.max_code)
    err = (dequantize_codes(codes, scale, zero) - values) ** 2
    if kept is not None:
        err = err * kept
    return err.sum(dim=-1)

