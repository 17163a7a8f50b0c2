"""Synthetic calibration data for the pruning and quantization tests.

Inputs have correlated channels (a random mixing matrix) and log-normal channel scales, like the
activations that enter LLM linear layers; that is what lets Hessian-aware methods beat
magnitude-only ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmfab.quant.hessian import HessianAccumulator


@dataclass(frozen=True, eq=False)
class LinearLayerCase:
    """weight float32 [out, in], inputs float32 [samples, in], hessian float32 [in, in]."""

    weight: torch.Tensor
    inputs: torch.Tensor
    hessian: torch.Tensor

    def output_error(self, approx: torch.Tensor) -> float:
        """||(W - approx) Xᵀ||² summed over outputs and samples."""
        return float(((self.weight - approx.float()) @ self.inputs.T).pow(2).sum())


def correlated_layer(seed: int = 0, out_features: int = 48, in_features: int = 96, samples: int = 512) -> LinearLayerCase:
    """A random linear layer with correlated, unevenly scaled calibration inputs."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(in_features, in_features, generator=gen) / in_features**0.5
    channel_scale = torch.exp(0.8 * torch.randn(in_features, generator=gen))
    latent = torch.randn(samples, in_features, generator=gen)
    inputs = (latent @ mixing + 0.3 * torch.randn(samples, in_features, generator=gen)) * channel_scale
    weight = 0.05 * torch.randn(out_features, in_features, generator=gen)
    acc = HessianAccumulator(in_features)
    for batch in inputs.split(100):
        acc.add_batch(batch)
    return LinearLayerCase(weight=weight, inputs=inputs, hessian=acc.hessian)
