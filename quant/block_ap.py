"""Block-wise reconstruction before end-to-end QAT (EfficientQAT's Block-AP).

For every decoder layer, in order:

1. the float teacher's layer runs on the float model's hidden states (the outputs of the float
   layers before it): its outputs are the targets;
2. the student's layer becomes weights-mode QAT stand-ins (:class:`~llmfab.quant.qat_modules.QatLinear`:
   latent kept weights and per-group scales through the brevitas group quantizer, straight-through
   rounding; integer zero points and 2:4 masks stay fixed) and trains with AdamW, for ``epochs``
   passes over the windows, on the mean squared error between its output and the target, its
   input being the *student's* hidden states (the outputs of the layers already reconstructed), as
   EfficientQAT does, so a layer also learns to absorb the error of the layers before it;
3. the layer is frozen back into a :class:`~llmfab.quant.qlinear.QuantLinear` (float16 scales)
   and the student's hidden states move on through the frozen layer, so the next layer sees
   exactly what the saved model computes.

After each layer the reconstructed layers are written to a checkpoint (atomically); a run that
finds one resumes after its last layer, bit for bit as if it had not stopped. The end-to-end
step (quant/qat.py, scales only by default) follows in :func:`~llmfab.quant.qat.run_recipe_qat`.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmfab.errors import InputError
from llmfab.quant.artifact import codes_digest
from llmfab.quant.calibrate import run_layer
from llmfab.quant.model import LlamaModel, iter_linears, projection, replace_linear
from llmfab.quant.qat import cosine_step, save_atomically, trainable_optimizer
from llmfab.quant.qat_modules import QatMode, from_qat, to_qat
from llmfab.quant.qlinear import QuantLinear
from llmfab.quant.weight_quant import QuantizedWeight
from llmfab.quant.weights import LINEAR_NAMES

CHECKPOINT_KIND = "llmfab-block-reconstruction"
STORED = ("codes", "scales", "zeros", "mask_codes")  # what a reconstructed projection is


@dataclass(frozen=True)
class BlockConfig:
    """How to train each layer: ``epochs`` passes over the windows in batches of ``batch_size``;
    ``lr`` for the latent weights, ``scale_lr`` for the per-group scales, both decaying along a
    cosine to 0 over the layer's steps."""

    epochs: int
    lr: float = 1e-3
    scale_lr: float = 1e-3
    batch_size: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise InputError(f"--qat-block-epochs must be at least 1 for block reconstruction, got {self.epochs}")
        if self.lr <= 0 or self.scale_lr <= 0:
            raise InputError(f"--qat-block-lr and --qat-block-scale-lr must be positive, got {self.lr} and "
                             f"{self.scale_lr}")
        if self.batch_size < 1:
            raise InputError(f"block reconstruction batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class LayerReport:
    """One layer's reconstruction: training loss of every step, and the held-out mean squared
    error of the layer's output before (post-training) and after training (None without
    held-out windows)."""

    layer: int
    losses: list[float]
    held_out_before: float | None
    held_out_after: float | None
    seconds: float


class _Stream:
    """Hidden states ``[N, T, H]`` of some windows in the float model and in the student."""

    def __init__(self, teacher: LlamaModel, student: LlamaModel, windows: torch.Tensor):
        self.float = teacher.model.embed_tokens(windows).float()
        self.student = student.model.embed_tokens(windows).float()
        self.target = None

    def take_target(self, teacher_layer, cos, sin) -> None:
        """The float layer's outputs for the float inputs: what the student's layer should give."""
        self.target = run_layer(teacher_layer, self.float, cos, sin)

    def advance(self, student_layer, cos, sin) -> None:
        """Move both streams past the layer (the target must have been taken)."""
        self.student = run_layer(student_layer, self.student, cos, sin)
        self.float, self.target = self.target, None

    def error(self, student_layer, cos, sin) -> float:
        """Mean squared error of the student's layer output against the target."""
        return F.mse_loss(run_layer(student_layer, self.student, cos, sin), self.target).item()


def _fingerprint(student: LlamaModel, windows: torch.Tensor, held_out, config: BlockConfig) -> dict:
    """What a checkpoint must have been made from to be resumed: the post-training model (its
    stored tensors), the windows and the training settings."""
    windows_digest = hashlib.sha256(windows.numpy().tobytes())
    if held_out is not None:
        windows_digest.update(held_out.numpy().tobytes())
    return {"model": codes_digest(student), "windows": windows_digest.hexdigest(), "config": asdict(config)}


def _load_checkpoint(path: Path, fingerprint: dict) -> dict:
    try:
        state = torch.load(path, weights_only=True)
        ok = isinstance(state, dict) and state.get("kind") == CHECKPOINT_KIND
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        ok = False
    if not ok:
        raise InputError(f"block reconstruction checkpoint {path} cannot be read (damaged, or not a "
                         "block reconstruction checkpoint); delete it to start block reconstruction afresh")
    ok = state.get("fingerprint") == fingerprint
    if not ok:
        raise InputError(
            f"block reconstruction checkpoint {path} was made from another post-training model, other "
            "calibration windows or other --qat-block-* settings; delete it to start block "
            "reconstruction afresh"
        )
    return state


def _restore_layer(student: LlamaModel, index: int, stored: dict) -> None:
    """Put the reconstructed projections of layer ``index`` from a checkpoint into ``student``."""
    for name in LINEAR_NAMES:
        old = projection(student.model.layers[index], name)
        tensors = stored[f"{index}.{name}"]
        quantized = QuantizedWeight(tensors["codes"], tensors["scales"], tensors["zeros"], old.bits,
                                    old.group_size, tensors.get("mask_codes"), old.zero_halves)
        replace_linear(student, index, name, QuantLinear(quantized, old.act_bits))


def _stored_layer(student: LlamaModel, index: int) -> dict:
    return {f"{index}.{name}": {key: getattr(module, key) for key in STORED if getattr(module, key) is not None}
            for i, name, module in iter_linears(student) if i == index}


@torch.no_grad()
def block_reconstruction(student: LlamaModel, teacher: LlamaModel, windows: torch.Tensor, config: BlockConfig,
                         held_out: torch.Tensor | None = None, checkpoint: Path | None = None,
                         progress=None) -> list[LayerReport]:
    """Reconstruct every decoder layer of ``student`` (post-training quantized, changed in place)
    against the float ``teacher`` on token ``windows`` ``[N, T]``; ``held_out`` ``[M, T]``
    windows, if given, are never trained on and measure each layer's error before and after.
    Returns one report per layer trained in this call (layers restored from ``checkpoint`` are
    not reported again)."""
    if windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise InputError(f"block reconstruction needs token windows [N >= 1, T >= 2], got {tuple(windows.shape)}")
    if any(isinstance(m, QuantLinear) and m.unrounded is None for _, _, m in iter_linears(student)):
        # measured on SmolLM2 (docs/compression_measurements.md): latent weights that start on the
        # grid give the scales no gradient (round(w/s) - w/s is 0) and the layer error rose
        raise InputError("block reconstruction starts from GPTQ's unrounded weights, which a saved "
                         "artifact keeps only when quantized with --keep-unrounded; pass --qat-from an "
                         "artifact made so, drop --qat-from (calibrate afresh) or drop --qat-block-epochs")
    fingerprint = _fingerprint(student, windows, held_out, config)
    state = {"kind": CHECKPOINT_KIND, "fingerprint": fingerprint, "done": 0, "layers": {}}
    if checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, fingerprint)
    layers = len(student.model.layers)
    if state["done"] == layers:  # all reconstructed already (e.g. the end-to-end step was interrupted)
        for index in range(layers):
            _restore_layer(student, index, state["layers"])
        return []
    positions = torch.arange(windows.shape[1]).unsqueeze(0)
    cos, sin = student.model.rotary(positions)
    train = _Stream(teacher, student, windows)
    held = _Stream(teacher, student, held_out) if held_out is not None else None
    streams = [s for s in (train, held) if s is not None]
    reports = []
    for index, (teacher_layer, layer) in enumerate(zip(teacher.model.layers, student.model.layers)):
        for stream in streams:
            stream.take_target(teacher_layer, cos, sin)
        if index < state["done"]:
            _restore_layer(student, index, state["layers"])
        else:
            start = time.perf_counter()
            before = held.error(layer, cos, sin) if held else None
            losses = _train_layer(student, index, train, cos, sin, config, progress)
            after = held.error(layer, cos, sin) if held else None
            reports.append(LayerReport(index, losses, before, after, time.perf_counter() - start))
            state["layers"].update(_stored_layer(student, index))
            state["done"] = index + 1
            if checkpoint is not None:
                save_atomically(state, checkpoint)
        for stream in streams:
            stream.advance(layer, cos, sin)
    return reports


@torch.enable_grad()
def _train_layer(student: LlamaModel, index: int, stream: _Stream, cos, sin, config: BlockConfig,
                 progress) -> list[float]:
    """Train decoder layer ``index`` of ``student`` to map ``stream.student`` to ``stream.target``;
    the layer ends frozen (QuantLinear) even if interrupted."""
    layer = student.model.layers[index]
    optimizer = trainable_optimizer(student, to_qat(student, QatMode.WEIGHTS, layer=index), config.lr,
                                    config.scale_lr)
    count = stream.student.shape[0]
    per_epoch = math.ceil(count / config.batch_size)
    steps = config.epochs * per_epoch
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    bar = progress(range(steps), desc=f"block {index + 1}/{len(student.model.layers)}", unit="step",
                   total=steps) if progress else None
    losses: list[float] = []
    try:
        for step in bar if bar is not None else range(steps):
            if step % per_epoch == 0:
                order = torch.randperm(count, generator=generator)
            rows = order[(step % per_epoch) * config.batch_size : (step % per_epoch + 1) * config.batch_size]
            loss = F.mse_loss(layer(stream.student[rows], cos, sin), stream.target[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            cosine_step(optimizer, step, steps)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise InputError(f"block reconstruction of layer {index} diverged at step {step} (loss "
                                 f"{losses[-1]}); lower --qat-block-lr and --qat-block-scale-lr")
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    finally:
        from_qat(student)
        for p in student.parameters():
            p.requires_grad_(False)
    return losses
