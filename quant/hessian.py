"""Layer Hessian H = 2 XᵀX / n from calibration inputs, and the factor the OBS sweeps need.

For a linear layer y = x Wᵀ and squared output error, the Hessian of the loss with respect to one
row of W is H = 2 XᵀX / n, where X ``[n, in]`` stacks the calibration inputs. SparseGPT and GPTQ
use the upper Cholesky factor U of the dampened inverse, H⁻¹ = UᵀU.
"""

from __future__ import annotations

import torch

from llmfab.errors import InputError


class HessianAccumulator:
    """Running mean of 2 xᵀx over calibration inputs of one linear layer.

    The stored matrix is always ``2 XᵀX / n`` for the n rows seen so far; each batch rescales
    the previous mean instead of summing, so large n neither overflows nor loses small terms.
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        """Start empty for inputs with ``in_features`` columns; the Hessian is kept in ``dtype``."""
        if in_features < 1:
            raise InputError(f"in_features {in_features} must be positive (the layer's input width)")
        if not dtype.is_floating_point:
            raise InputError(f"Hessian dtype {dtype} must be a float dtype, e.g. torch.float32 or float64")
        self.in_features = in_features
        self.samples = 0
        self._hessian = torch.zeros(in_features, in_features, dtype=dtype, device=device)

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Add inputs ``[..., in_features]`` (any float dtype); every leading index is one sample."""
        if inputs.shape[-1] != self.in_features:
            raise InputError(
                f"calibration inputs have {inputs.shape[-1]} features but this layer takes "
                f"{self.in_features}; pass the input of the same linear layer"
            )
        rows = inputs.reshape(-1, self.in_features).to(self._hessian.dtype)
        count = rows.shape[0]
        if count == 0:
            return
        total = self.samples + count
        self._hessian.mul_(self.samples / total)
        rows = rows * (2.0 / total) ** 0.5
        self._hessian.addmm_(rows.T, rows)
        self.samples = total

    @property
    def hessian(self) -> torch.Tensor:
        """``2 XᵀX / n`` as ``[in, in]`` in the accumulator's dtype (a copy)."""
        if self.samples == 0:
            raise InputError("no calibration inputs were added; call add_batch with layer inputs first")
        return self._hessian.clone()


def inverse_hessian_cholesky(hessian: torch.Tensor, damp_ratio: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of the dampened inverse Hessian, H⁻¹ = UᵀU.

    Inputs never seen active (zero diagonal) get diagonal 1, then ``damp_ratio * mean(diag H)``
    is added to the diagonal.

    Args:
        hessian: float ``[in, in]`` symmetric positive semi-definite.
        damp_ratio: dampening relative to the mean diagonal, e.g. 0.01.

    Returns:
        float32 ``[in, in]`` upper triangular.
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise InputError(f"Hessian has shape {tuple(hessian.shape)}; pass a square [in, in] matrix")
    if damp_ratio < 0:
        raise InputError(f"damp_ratio {damp_ratio} is negative; use a small positive value such as 0.01")
    h = hessian.to(torch.float64).clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    diag += damp_ratio * diag.mean()
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise InputError(
            f"the dampened Hessian is not positive definite (damp_ratio={damp_ratio}); raise "
            "damp_ratio (e.g. to 0.1) or add more calibration samples"
        )
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
