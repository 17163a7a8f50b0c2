"""Trainable stand-ins for the fake-quant modules during quantization-aware training (QAT).

Two ways to train a decoder projection, both starting exactly at the post-training weight:

* :class:`QatLinear` (``weights`` mode): a latent float copy of the *kept* weights is quantized
  group-wise by a brevitas asymmetric integer quantizer whose per-group scales train with the
  weights (straight-through rounding), so codes may change. The zero point stays the integer the
  post-training fit chose (:class:`FixedIntegerZeroPoint`): brevitas' own trained zero points are
  held in real units (``z * s``) and divided by the scale in every forward pass, so training the
  scale silently moved the integer zero point.
* :class:`ScaleQatLinear` (``scales`` mode, EfficientQAT's end-to-end step): codes and zero points
  are frozen and only the per-group scales train; the weight is ``s * (q - z)`` with ``s`` rounded
  to float16 in the forward pass (straight through), so what trains is bit for bit what is saved.
  There is no rounding in the loop, so this is plain dequantization rather than a brevitas
  quantizer (brevitas' straight-through rounding gives an on-grid weight no scale gradient).

Inputs are fake-quantized per token to int8 with a straight-through estimator (brevitas' core
package has no per-token dynamic activation quantizer, so that piece is ours; it is the same
function the fake-quant model uses). :class:`QatHead` does the same for the frozen LM head: the
fake-quant head rounds its input with ``torch.round``, whose gradient is zero, so without it the
only gradient reaching the decoder flowed through each token's max-|x| element.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

from llmfab.errors import InputError
from llmfab.quant.model import LlamaModel, iter_linears, replace_linear
from llmfab.quant.qlinear import QuantLinear, fake_quant_per_token
from llmfab.quant.sparse_index import compress_2to4, decode_2to4_mask
from llmfab.quant.weight_quant import QuantizedWeight


class QatMode(enum.Enum):
    """What QAT trains in each decoder projection."""

    SCALES = "scales"  # per-group scales only; codes and zero points frozen
    WEIGHTS = "weights"  # latent weights and per-group scales; codes may change


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``quantized`` (bit for bit); backward: identity to ``x``."""
    return quantized.detach() + (x - x.detach())


def quantize_input(x: torch.Tensor, act_bits: int | None) -> torch.Tensor:
    """Per-token fake-quant of a linear input with a straight-through gradient (float32)."""
    x = x.float()
    return x if act_bits is None else straight_through(x, fake_quant_per_token(x, act_bits))


def _scatter_kept(kept: torch.Tensor, kept_index: torch.Tensor | None, out_features: int,
                  in_features: int) -> torch.Tensor:
    """Kept weights ``[out, in/2]`` -> dense ``[out, in]`` with zeros at 2:4-pruned positions
    (identity for a dense weight), differentiable."""
    if kept_index is None:
        return kept
    dense = kept.new_zeros(out_features * in_features)
    return dense.index_put((kept_index,), kept.reshape(-1)).view(out_features, in_features)


class FixedIntegerZeroPoint(nn.Module):
    """A brevitas zero-point implementation returning fixed integer zero points ``[out, groups, 1]``."""

    def __init__(self, zeros: torch.Tensor):
        super().__init__()
        self.register_buffer("value", zeros.float().unsqueeze(-1))

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bit_width: torch.Tensor) -> torch.Tensor:
        return self.value


def _group_quantizer(bits: int, group: int):
    """A brevitas weight quantizer: asymmetric ``bits``-bit codes, trained float scale per group of
    ``group`` consecutive input columns (the zero point is replaced by a fixed one afterwards)."""
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant.shifted_scaled_int import ShiftedUint8WeightGroupQuantFloat

    return type(f"Uint{bits}WeightGroup{group}", (ShiftedUint8WeightGroupQuantFloat,), {
        "bit_width": bits, "group_size": group,
        "scaling_impl_type": ScalingImplType.PARAMETER_FROM_STATS,
    })


class _QatBase(nn.Module):
    """Shared shape bookkeeping of a trainable projection made from a :class:`QuantLinear`."""

    def __init__(self, source: QuantLinear):
        super().__init__()
        q = source.quantized
        if q.zero_halves:
            raise InputError("QAT keeps integer zero points; quantize with --zero-point integer when "
                             "--qat-steps > 0")
        self.bits, self.group_size, self.act_bits = q.bits, q.group_size, source.act_bits
        self.codes_per_group = q.codes_per_group
        self.out_features, self.in_features = source.out_features, source.in_features
        self.register_buffer("mask_codes", q.mask_codes)
        self.register_buffer("zeros", q.zeros.clone())
        self.kept_index = None
        if q.mask_codes is not None:
            self.kept_index = decode_2to4_mask(q.mask_codes).reshape(-1).nonzero().squeeze(1)

    def dense_weight(self) -> torch.Tensor:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_input(x, self.act_bits), self.dense_weight())

    def _frozen(self, codes: torch.Tensor, scales: torch.Tensor) -> QuantLinear:
        return QuantLinear(QuantizedWeight(codes.to(torch.uint8).contiguous(), scales.to(torch.float16),
                                           self.zeros.clone(), self.bits, self.group_size,
                                           self.mask_codes, False), self.act_bits)


class QatLinear(_QatBase):
    """``weights`` mode: latent kept weights and per-group scales, brevitas group quantizer."""

    def __init__(self, source: QuantLinear):
        super().__init__(source)
        from brevitas.nn import QuantLinear as BrevitasLinear

        q = source.quantized
        # start from GPTQ's pre-rounding weights when known: they round to the PTQ codes but sit
        # off the grid, so both weights and scales get useful gradients from the first step
        kept = (source.unrounded if source.unrounded is not None else source.weight).float()
        if q.mask_codes is not None:
            kept = compress_2to4(kept, decode_2to4_mask(q.mask_codes))
        # brevitas holds the kept weights; its layer is only used for quant_weight(), never called
        self.kept = BrevitasLinear(kept.shape[1], kept.shape[0], bias=False,
                                   weight_quant=_group_quantizer(q.bits, q.codes_per_group))
        with torch.no_grad():
            self.kept.weight.copy_(kept)
            self.kept.quant_weight()  # brevitas initialises its scales from statistics on first use
            tensor_quant = self.kept.weight_quant.tensor_quant
            tensor_quant.zero_point_impl = FixedIntegerZeroPoint(q.zeros)
            # brevitas trains the group's range, scale * (2**bits - 1)
            tensor_quant.scaling_impl.value.copy_((q.scales.float() * (2**q.bits - 1)).unsqueeze(-1))

    @property
    def scale_parameter(self) -> nn.Parameter:
        """brevitas' trained per-group range ``[out, groups, 1]`` (scale * (2**bits - 1))."""
        return self.kept.weight_quant.tensor_quant.scaling_impl.value

    def trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weight parameters, scale parameters)."""
        return [self.kept.weight], [self.scale_parameter]

    def dense_weight(self) -> torch.Tensor:
        """The fake-quantized weight ``[out, in]`` (zeros at pruned positions), differentiable."""
        return _scatter_kept(self.kept.quant_weight().value, self.kept_index, self.out_features,
                             self.in_features)

    @torch.no_grad()
    def freeze(self) -> QuantLinear:
        """The trained weight as integer codes and float16 scales; the codes are rounded with the
        float16 scale that is stored, so the saved weight is the trained one up to that rounding."""
        scales = (self.scale_parameter.squeeze(-1) / (2**self.bits - 1)).to(torch.float16)
        latent = self.kept.weight.reshape(self.out_features, scales.shape[1], -1)
        codes = torch.round(latent / scales.float().unsqueeze(-1)) + self.zeros.float().unsqueeze(-1)
        codes = codes.clamp(0, 2**self.bits - 1).reshape(self.kept.weight.shape)
        return self._frozen(codes, scales)


class ScaleQatLinear(_QatBase):
    """``scales`` mode: frozen codes and zero points, trained per-group scales ``[out, groups]``."""

    def __init__(self, source: QuantLinear):
        super().__init__(source)
        q = source.quantized
        self.register_buffer("codes", q.codes.clone())
        self.scale = nn.Parameter(q.scales.float().clone())

    def trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weight parameters: none, scale parameters)."""
        return [], [self.scale]

    def dense_weight(self) -> torch.Tensor:
        """``s16 * (q - z)`` scattered to ``[out, in]``; ``s16`` is the float16 scale that is saved."""
        scale = straight_through(self.scale, self.scale.to(torch.float16).float())
        offsets = (self.codes.float().view(self.out_features, -1, self.codes_per_group)
                   - self.zeros.float().unsqueeze(-1))
        kept = (scale.unsqueeze(-1) * offsets).view(self.out_features, -1)
        return _scatter_kept(kept, self.kept_index, self.out_features, self.in_features)

    @torch.no_grad()
    def freeze(self) -> QuantLinear:
        """The same codes with the trained float16 scales: exactly the weight that was trained."""
        return self._frozen(self.codes, self.scale.to(torch.float16))


class QatHead(nn.Module):
    """The frozen fake-quant LM head with a straight-through gradient for its input quantizer."""

    def __init__(self, source: QuantLinear):
        super().__init__()
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_input(x, self.source.act_bits), self.source.weight)


QAT_MODULES = {QatMode.WEIGHTS: QatLinear, QatMode.SCALES: ScaleQatLinear}


def to_qat(model: LlamaModel, mode: QatMode = QatMode.WEIGHTS, layer: int | None = None) -> list[_QatBase]:
    """Swap every decoder QuantLinear of ``model`` for its trainable stand-in (and the LM head
    for a :class:`QatHead`); returns the decoder stand-ins in order. With ``layer``, only that
    decoder layer's projections are swapped and the head is left as it is (block-wise training)."""
    swapped = []
    for index, name, module in list(iter_linears(model)):
        if layer is not None and index != layer:
            continue
        if not isinstance(module, QuantLinear):
            raise InputError(f"layer {index} {name} is not quantized; run post-training quantization first")
        qat = QAT_MODULES[mode](module)
        replace_linear(model, index, name, qat)
        swapped.append(qat)
    if layer is None and isinstance(model.lm_head, QuantLinear):
        model.lm_head = QatHead(model.lm_head)
    return swapped


def from_qat(model: LlamaModel) -> None:
    """Freeze every trainable stand-in of ``model`` back into a QuantLinear."""
    for layer, name, module in list(iter_linears(model)):
        if isinstance(module, _QatBase):
            replace_linear(model, layer, name, module.freeze())
    if isinstance(model.lm_head, QatHead):
        model.lm_head = model.lm_head.source
