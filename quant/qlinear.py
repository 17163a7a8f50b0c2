"""Fake-quant modules: integer weights held as codes, computed in float32 (the engine's reference).

* :class:`QuantLinear` replaces a projection. It stores the group-wise codes, scales, zero points
  and (under 2:4) the pattern codes of a :class:`~llmfab.quant.weight_quant.QuantizedWeight` as
  buffers, dequantizes the weight once, and quantizes its input per token (A8) before the matmul.
* :class:`QuantEmbedding` looks up rows of a quantized embedding table.

Embeddings and the LM head are stored as 8-bit codes with one scale and zero point per row
(a group as wide as the hidden size); a tied LM head shares the embedding's buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmfab.quant.weight_quant import (
    GroupQuantConfig,
    QuantizedWeight,
    ScaleInit,
    dequantize_groupwise,
    quantize_groupwise,
)

EMBEDDING_BITS = 8


def fake_quant_per_token(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token dynamic quantization, returned dequantized.

    Each row of ``x`` ``[..., features]`` gets scale ``max|x| / (2**(bits-1) - 1)`` (float32) and
    codes ``clamp(round(x / scale), -q, q)`` with round-half-to-even; an all-zero row stays zero.
    Returns float32 ``[..., features]``.
    """
    qmax = (1 << (bits - 1)) - 1
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


class QuantLinear(nn.Module):
    """y = A(x) Ŵᵀ with Ŵ = dequantize(codes, scales, zeros, mask) and A the per-token fake-quant
    (identity when ``act_bits`` is None).

    Buffers (see QuantizedWeight): ``codes`` uint8 ``[out, in]`` or ``[out, in/2]`` under 2:4,
    ``scales`` float16 ``[out, in/group]``, ``zeros`` uint8 ``[out, in/group]``, ``mask_codes``
    uint8 ``[out, in/4]`` (2:4 only); ``weight`` float32 ``[out, in]`` is derived, not stored.
    """

    def __init__(self, quantized: QuantizedWeight, act_bits: int | None,
                 weight: torch.Tensor | None = None, unrounded: torch.Tensor | None = None):
        """``weight``: the dequantized matrix if already at hand (e.g. a tied embedding's);
        ``unrounded``: GPTQ's weights just before rounding (float32 ``[out, in]``), kept in memory
        (not saved) as the starting point of quantization-aware training."""
        super().__init__()
        self.unrounded = unrounded
        self.bits = quantized.bits
        self.group_size = quantized.group_size
        self.zero_halves = quantized.zero_halves
        self.act_bits = act_bits
        self.register_buffer("codes", quantized.codes)
        self.register_buffer("scales", quantized.scales)
        self.register_buffer("zeros", quantized.zeros)
        self.register_buffer("mask_codes", quantized.mask_codes)
        if weight is None:
            weight = dequantize_groupwise(quantized)
        self.register_buffer("weight", weight, persistent=False)
        self.out_features, self.in_features = self.weight.shape

    @property
    def quantized(self) -> QuantizedWeight:
        """The stored integer form of the weight."""
        return QuantizedWeight(self.codes, self.scales, self.zeros, self.bits, self.group_size,
                               self.mask_codes, self.zero_halves)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., in]`` -> float32 ``[..., out]``."""
        if self.act_bits is not None:
            x = fake_quant_per_token(x, self.act_bits)
        return F.linear(x.float(), self.weight)

    def extra_repr(self) -> str:
        sparse = ", 2:4" if self.mask_codes is not None else ""
        return (f"in={self.in_features}, out={self.out_features}, w{self.bits} g{self.group_size}"
                f"{sparse}, act_bits={self.act_bits}")


class QuantEmbedding(nn.Module):
    """Token ids ``[...]`` -> float32 rows ``[..., hidden]`` of a per-row quantized table.

    ``table`` is a QuantizedWeight ``[vocab, hidden]`` whose group is a whole row.
    """

    def __init__(self, table: QuantizedWeight):
        super().__init__()
        self.bits = table.bits
        self.group_size = table.group_size
        self.zero_halves = table.zero_halves
        self.register_buffer("codes", table.codes)
        self.register_buffer("scales", table.scales)
        self.register_buffer("zeros", table.zeros)
        self.register_buffer("weight", dequantize_groupwise(table), persistent=False)

    @property
    def quantized(self) -> QuantizedWeight:
        """The stored integer form of the table."""
        return QuantizedWeight(self.codes, self.scales, self.zeros, self.bits, self.group_size,
                               None, self.zero_halves)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def quantize_rows(weight: torch.Tensor, name: str) -> QuantizedWeight:
    """8-bit codes with a min-max scale and zero point per row: float ``[rows, cols]``."""
    config = GroupQuantConfig(bits=EMBEDDING_BITS, group_size=weight.shape[1], init=ScaleInit.MINMAX)
    return quantize_groupwise(weight.detach(), config, name=name)


def quantize_embeddings(model, act_bits: int | None) -> None:
    """Replace ``model.model.embed_tokens`` and ``model.lm_head`` by 8-bit per-row versions.

    A tied LM head keeps sharing the embedding's codes and scales.
    """
    embed = QuantEmbedding(quantize_rows(model.model.embed_tokens.weight, "model.embed_tokens"))
    if model.config.tie_word_embeddings:
        head = QuantLinear(embed.quantized, act_bits, weight=embed.weight)
    else:
        head = QuantLinear(quantize_rows(model.lm_head.weight, "lm_head"), act_bits)
    model.model.embed_tokens = embed
    model.lm_head = head
