"""Quantization-aware training (QAT) with distillation from the float model.

The post-training result (GPTQ codes, scales and zero points, fixed 2:4 masks) is the starting
point. Every decoder projection becomes a :class:`QatLinear`: a latent float copy of its *kept*
weights, quantized group-wise by a brevitas asymmetric integer quantizer whose per-group scales
are trained with the weights (straight-through rounding), and the fixed 2:4 mask scattering the
kept weights back into the dense matrix. Inputs are fake-quantized per token to int8 with a
straight-through estimator (brevitas' core package has no per-token dynamic activation quantizer,
so that piece is ours; it is the same function the fake-quant model uses).

The loss is the KL divergence from the float teacher's next-token distribution to the student's
(``loss="kl"``, the default), so the student learns to behave like the model it came from rather
than to fit the calibration text; ``loss="ce"`` trains on the text's next tokens instead.
Attention runs dense in float during training: the KV cache and the Λ window are not in the loop.

Training checkpoints (latent weights, scales, optimizer, step, random state) are written
atomically every ``checkpoint_every`` steps and resumed from when present. At the end each
QatLinear is frozen back into a :class:`QuantLinear` with float16 scales, so the artifact format
does not change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmfab.errors import InputError
from llmfab.quant.model import LlamaModel, iter_linears, replace_linear
from llmfab.quant.qlinear import QuantLinear, fake_quant_per_token
from llmfab.quant.sparse_index import compress_2to4, decode_2to4_mask
from llmfab.quant.weight_quant import QuantizedWeight

LOSSES = ("kl", "ce")


@dataclass(frozen=True)
class QatConfig:
    """How to train. ``lr`` is for latent weights, ``scale_lr`` for the per-group scales."""

    steps: int
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 1e-5
    scale_lr: float = 1e-4
    temperature: float = 1.0
    loss: str = "kl"
    checkpoint_every: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0:
            raise InputError(f"--qat-steps must be >= 0, got {self.steps}")
        if self.batch_size < 1 or self.seq_len < 2:
            raise InputError(f"QAT batch size must be >= 1 and sequence length >= 2, got "
                             f"{self.batch_size} and {self.seq_len}")
        if self.loss not in LOSSES:
            raise InputError(f"QAT loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.lr <= 0 or self.scale_lr <= 0 or self.temperature <= 0:
            raise InputError("QAT learning rates and temperature must be positive")


def _straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: ``quantized``; backward: identity to ``x``."""
    return x + (quantized - x).detach()


def _group_quantizer(bits: int, group: int):
    """A brevitas weight quantizer: asymmetric ``bits``-bit codes, float scale and integer zero
    point per group of ``group`` consecutive input columns, scale a trained parameter."""
    from brevitas.core.zero_point import ParameterFromStatsFromParameterZeroPoint
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant.shifted_scaled_int import ShiftedUint8WeightGroupQuantFloat

    return type(f"Uint{bits}WeightGroup{group}", (ShiftedUint8WeightGroupQuantFloat,), {
        "bit_width": bits, "group_size": group,
        "scaling_impl_type": ScalingImplType.PARAMETER_FROM_STATS,
        "zero_point_impl": ParameterFromStatsFromParameterZeroPoint,  # a trained zero point
    })


class QatLinear(nn.Module):
    """Trainable stand-in for a :class:`QuantLinear` (same numerics in the forward pass)."""

    def __init__(self, source: QuantLinear):
        super().__init__()
        from brevitas.nn import QuantLinear as BrevitasLinear

        q = source.quantized
        if q.zero_halves:
            raise InputError(
                "QAT trains integer zero points only (brevitas' group quantizer); quantize with "
                "--zero-point integer when --qat-steps > 0"
            )
        self.bits, self.group_size, self.act_bits = q.bits, q.group_size, source.act_bits
        self.out_features, self.in_features = source.out_features, source.in_features
        self.register_buffer("mask_codes", q.mask_codes)
        # start from GPTQ's pre-rounding weights when known: they round to the PTQ codes but sit
        # off the grid, so both weights and scales get useful gradients from the first step
        kept = (source.unrounded if source.unrounded is not None else source.weight).float()
        if q.mask_codes is not None:
            mask = decode_2to4_mask(q.mask_codes)
            kept = compress_2to4(kept, mask)
            self.register_buffer("kept_index", mask.reshape(-1).nonzero().squeeze(1), persistent=False)
        # brevitas holds the kept weights; its layer is only used for quant_weight(), never called
        self.kept = BrevitasLinear(kept.shape[1], kept.shape[0], bias=False,
                                   weight_quant=_group_quantizer(q.bits, q.codes_per_group))
        with torch.no_grad():
            self.kept.weight.copy_(kept)
            self.kept.quant_weight()  # brevitas initialises its scales from statistics on first use
            tensor_quant = self.kept.weight_quant.tensor_quant
            # brevitas trains the group's range, scale * (2**bits - 1), and the zero point in
            # real units, zero * scale (rounded to an integer zero point in the forward pass)
            scale = q.scales.float()
            tensor_quant.scaling_impl.value.copy_((scale * (2**q.bits - 1)).unsqueeze(-1))
            tensor_quant.zero_point_impl.value.copy_((q.zero_points.float() * scale).unsqueeze(-1))

    def dense_weight(self) -> torch.Tensor:
        """The fake-quantized weight ``[out, in]`` (zeros at pruned positions), differentiable."""
        kept = self.kept.quant_weight().value
        if self.mask_codes is None:
            return kept
        dense = kept.new_zeros(self.out_features * self.in_features)
        return dense.index_put((self.kept_index,), kept.reshape(-1)).view(self.out_features, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.act_bits is not None:
            x = _straight_through(x, fake_quant_per_token(x, self.act_bits))
        return F.linear(x, self.dense_weight())

    @torch.no_grad()
    def freeze(self) -> QuantLinear:
        """The trained weight as integer codes with float16 scales (codes recomputed for them)."""
        quant = self.kept.quant_weight()
        scale = self.kept.weight_quant.tensor_quant.scaling_impl.value.squeeze(-1) / (2**self.bits - 1)
        scales = scale.to(torch.float16)
        zeros = _group_values(quant.zero_point, scales.shape).round().clamp(0, 2**self.bits - 1)
        latent = self.kept.weight.reshape(self.out_features, scales.shape[1], -1)
        codes = (torch.round(latent / scales.float().unsqueeze(-1)) + zeros.unsqueeze(-1))
        codes = codes.clamp(0, 2**self.bits - 1).reshape(self.kept.weight.shape).to(torch.uint8)
        frozen = QuantizedWeight(codes, scales, zeros.to(torch.uint8), self.bits, self.group_size,
                                 self.mask_codes, False)
        return QuantLinear(frozen, self.act_bits)


def _group_values(per_element: torch.Tensor, groups_shape) -> torch.Tensor:
    """brevitas' expanded per-element zero points -> one value per group ``[out, groups]``."""
    out, groups = groups_shape
    return per_element.reshape(out, groups, -1)[:, :, 0].float()


def to_qat(model: LlamaModel) -> list[QatLinear]:
    """Swap every decoder QuantLinear of ``model`` for a QatLinear; returns them in order."""
    swapped = []
    for layer, name, module in list(iter_linears(model)):
        if not isinstance(module, QuantLinear):
            raise InputError(f"layer {layer} {name} is not quantized; run post-training quantization first")
        qat = QatLinear(module)
        replace_linear(model, layer, name, qat)
        swapped.append(qat)
    return swapped


def from_qat(model: LlamaModel) -> None:
    """Freeze every QatLinear of ``model`` back into a QuantLinear."""
    for layer, name, module in list(iter_linears(model)):
        if isinstance(module, QatLinear):
            replace_linear(model, layer, name, module.freeze())


def distillation_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) on temperature-softened distributions."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


def _save_checkpoint(path: Path, step: int, model, optimizer, generator) -> None:
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "params": trainable, "optimizer": optimizer.state_dict(),
                "generator": generator.get_state()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model, optimizer, generator) -> int:
    try:
        state = torch.load(path, weights_only=True)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["params"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        return int(state["step"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise InputError(
            f"QAT checkpoint {path} does not match this model and recipe ({err}); delete it to "
            "start training afresh"
        ) from None


@torch.enable_grad()
def train_qat(student: LlamaModel, teacher: LlamaModel | None, windows: torch.Tensor,
              config: QatConfig, checkpoint: Path | None = None, progress=None) -> list[float]:
    """Train ``student`` (post-training quantized, changed in place) for ``config.steps`` steps.

    ``windows`` ``[N, T >= seq_len]`` are token windows of the training text; each step draws
    ``batch_size`` of them (with replacement) and a random ``seq_len`` slice of each.
    ``teacher`` is the float model (needed for ``loss="kl"``). Returns the loss of every step run
    in this call. The student ends with QuantLinear modules again.
    """
    if config.loss == "kl" and teacher is None:
        raise InputError("QAT with distillation (loss 'kl') needs the float teacher model")
    if windows.shape[1] < config.seq_len:
        raise InputError(f"QAT sequence length {config.seq_len} exceeds the training windows "
                         f"({windows.shape[1]} tokens)")
    for p in student.parameters():
        p.requires_grad_(False)
    qat_layers = to_qat(student)
    weights = [m.kept.weight for m in qat_layers]
    scales = [m.kept.weight_quant.tensor_quant.scaling_impl.value for m in qat_layers]
    for p in weights + scales:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": weights, "lr": config.lr},
                                   {"params": scales, "lr": config.scale_lr}], weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    start = _load_checkpoint(checkpoint, student, optimizer, generator) \
        if checkpoint is not None and checkpoint.is_file() else 0
    losses: list[float] = []
    steps = range(start, config.steps)
    bar = progress(steps, desc="QAT", unit="step", total=config.steps, initial=start) if progress else None
    student.train()
    try:
        for step in bar if bar is not None else steps:
            rows = torch.randint(0, windows.shape[0], (config.batch_size,), generator=generator)
            offset = int(torch.randint(0, windows.shape[1] - config.seq_len + 1, (1,), generator=generator))
            ids = windows[rows, offset : offset + config.seq_len]
            logits = student(ids)
            if config.loss == "kl":
                with torch.no_grad():
                    target = teacher(ids)
                loss = distillation_loss(logits[:, :-1], target[:, :-1], config.temperature)
            else:
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise InputError(f"QAT diverged at step {step} (loss {losses[-1]}); lower --qat-lr")
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if checkpoint is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                _save_checkpoint(checkpoint, step + 1, student, optimizer, generator)
    finally:
        student.eval()
        from_qat(student)
        for p in student.parameters():
            p.requires_grad_(False)
    return losses


def training_windows(tokenizer, recipe, seq_len: int) -> torch.Tensor:
    """All non-overlapping ``seq_len``-token windows ``[N, seq_len]`` of the calibration texts."""
    from llmfab.quant.calibrate import calibration_tokens

    tokens = calibration_tokens(tokenizer, recipe)
    count = len(tokens) // seq_len
    if count < 1:
        raise InputError(f"the calibration text has {len(tokens)} tokens, fewer than one QAT window "
                         f"of {seq_len}; pass a longer --calib-text")
    return torch.tensor(tokens[: count * seq_len], dtype=torch.long).view(count, seq_len)


def run_recipe_qat(model: LlamaModel, checkpoint, recipe, checkpoint_path: Path, progress=None) -> list[float]:
    """QAT of a post-training quantized ``model`` as its recipe says (teacher: the checkpoint's
    float weights; data: the calibration texts). The training checkpoint is removed when done."""
    config = QatConfig(steps=recipe.qat_steps, lr=recipe.qat_lr, scale_lr=10 * recipe.qat_lr,
                       loss=recipe.qat_loss)
    teacher = LlamaModel.from_checkpoint(checkpoint) if config.loss == "kl" else None
    windows = training_windows(checkpoint.tokenizer, recipe, config.seq_len)
    losses = train_qat(model, teacher, windows, config, checkpoint_path, progress)
    checkpoint_path.unlink(missing_ok=True)
    return losses
