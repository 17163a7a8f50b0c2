"""Quantization-aware training (QAT) with distillation from the float model.

The post-training result (GPTQ codes, scales and integer zero points, fixed 2:4 masks) is the
starting point. Every decoder projection becomes a trainable stand-in (quant/qat_modules.py): in
``scales`` mode (the default, EfficientQAT's end-to-end step) only the per-group scales train and
the codes stay frozen; in ``weights`` mode latent weights and scales train through a brevitas
group quantizer, so codes may change. Linear inputs, including the frozen LM head's, are
fake-quantized per token with straight-through gradients.

The loss is the KL divergence from the float teacher's next-token distribution to the student's
(``loss="kl"``, the default), averaged over tokens, so the student learns to behave like the model
it came from rather than to fit the calibration text; ``loss="ce"`` trains on the text's next tokens
instead. Attention runs dense in float during training: the KV cache and the Λ window are not in
the loop (they act at evaluation, as after post-training quantization).

Training checkpoints (trained tensors, optimizer, step, random state) are written atomically every
``checkpoint_every`` steps and resumed from when present. At the end every stand-in is frozen back
into a :class:`~llmfab.quant.qlinear.QuantLinear` with float16 scales, so the artifact format does
not change.

:func:`run_recipe_qat` can put block-wise reconstruction (quant/block_ap.py, EfficientQAT's
Block-AP) before these end-to-end steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmfab.errors import InputError
from llmfab.quant.model import LlamaModel
from llmfab.quant.qat_modules import QatLinear, QatMode, ScaleQatLinear, from_qat, to_qat

__all__ = ["LOSSES", "QatConfig", "QatLinear", "QatMode", "QatRun", "ScaleQatLinear", "block_windows",
           "distillation_loss", "from_qat", "run_recipe_qat", "to_qat", "train_qat", "training_windows"]

LOSSES = ("kl", "ce")


@dataclass(frozen=True)
class QatConfig:
    """How to train. ``lr`` is for latent weights (``weights`` mode only), ``scale_lr`` for the
    per-group scales; the scale learning rate decays to 0 along a cosine over ``steps``."""

    steps: int
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 1e-5
    scale_lr: float = 1e-4
    temperature: float = 1.0
    loss: str = "kl"
    mode: QatMode = QatMode.SCALES
    checkpoint_every: int = 5
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
        if not isinstance(self.mode, QatMode):
            raise InputError(f"QAT mode {self.mode!r} is not one of "
                             f"{', '.join(m.value for m in QatMode)}")


def distillation_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) on temperature-softened distributions."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename it into place: a reader (or a resumed
    run after a crash) sees the previous checkpoint or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)  # DIR.qat.pt sits beside -o DIR, whose parent may be new
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _save_checkpoint(path: Path, step: int, model, optimizer, generator) -> None:
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    save_atomically({"step": step, "params": trainable, "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state()}, path)


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


def trainable_optimizer(model, modules, lr: float, scale_lr: float) -> torch.optim.AdamW:
    """AdamW over the QAT stand-ins ``modules`` of ``model``: their scales at ``scale_lr``, their
    latent weights (weights mode) at ``lr``; every other parameter of ``model`` is frozen. Each
    group keeps its ``base_lr`` for :func:`cosine_factor`."""
    for p in model.parameters():
        p.requires_grad_(False)
    weights, scales = [], []
    for module in modules:
        module_weights, module_scales = module.trainable()
        weights += module_weights
        scales += module_scales
    for p in weights + scales:
        p.requires_grad_(True)
    groups = [{"params": scales, "lr": scale_lr, "base_lr": scale_lr}]
    if weights:
        groups.append({"params": weights, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def cosine_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier of step ``step`` (0-based) of ``steps``: 1 at the first step,
    falling along a half cosine towards 0 (the last step still moves)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


def cosine_step(optimizer, step: int, steps: int) -> None:
    """One optimizer step at each group's ``base_lr`` times :func:`cosine_factor`."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * cosine_factor(step, steps)
    optimizer.step()


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
    if windows.dim() != 2 or windows.shape[0] < 1:
        raise InputError(f"QAT needs token windows [N >= 1, T], got shape {tuple(windows.shape)}")
    if windows.shape[1] < config.seq_len:
        raise InputError(f"QAT sequence length {config.seq_len} exceeds the training windows "
                         f"({windows.shape[1]} tokens)")
    optimizer = trainable_optimizer(student, to_qat(student, config.mode), config.lr, config.scale_lr)
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
            cosine_step(optimizer, step, config.steps)
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


def training_tokens(tokenizer, recipe) -> list[int]:
    """The texts QAT and block reconstruction train on, tokenized and concatenated: the recipe's
    ``qat_texts``, else its ``calib_texts``, else the text shipped with llmfab for its width: the
    four-novel training text up to ``BUNDLED_TRAINING_MAX_BITS``-bit weights, the calibration
    excerpt above (quant/recipe.py says what each measured)."""
    from llmfab.quant.calibrate import default_calibration_text, default_training_text, text_tokens
    from llmfab.quant.recipe import BUNDLED_TRAINING_MAX_BITS

    if recipe.qat_texts or recipe.calib_texts:
        option = "--qat-text" if recipe.qat_texts else "--calib-text"
        return text_tokens(tokenizer, [Path(p) for p in recipe.qat_texts or recipe.calib_texts], option)
    wide = recipe.weight_bits > BUNDLED_TRAINING_MAX_BITS
    bundled = default_calibration_text() if wide else default_training_text()
    return text_tokens(tokenizer, [bundled], "the bundled text")


def training_windows(tokenizer, recipe, seq_len: int) -> torch.Tensor:
    """All non-overlapping ``seq_len``-token windows ``[N, seq_len]`` of the training texts
    (:func:`training_tokens`)."""
    tokens = training_tokens(tokenizer, recipe)
    count = len(tokens) // seq_len
    if count < 1:
        raise InputError(f"the training text has {len(tokens)} tokens, fewer than one QAT window "
                         f"of {seq_len}; pass a longer --qat-text or --calib-text")
    return torch.tensor(tokens[: count * seq_len], dtype=torch.long).view(count, seq_len)


QAT_FIELDS = ("qat_steps", "qat_lr", "qat_scale_lr", "qat_loss", "qat_mode", "qat_block_epochs",
              "qat_block_samples", "qat_block_lr", "qat_block_scale_lr", "qat_texts")
BLOCK_HELD_OUT = 2  # windows at the end of the calibration text that block reconstruction never trains on


def post_training_model(folder, config, recipe) -> LlamaModel:
    """The fake-quant model of the post-training artifact ``folder``, checked to be of the model
    ``config`` (ModelConfig) and of ``recipe`` up to its QAT settings: the starting point of QAT
    without calibrating again. GPTQ's pre-rounding weights come from the artifact's
    ``unrounded.safetensors`` (written by ``llmfab quantize --keep-unrounded``) when it has one;
    without it ``weights``-mode QAT starts with latent weights on the grid and block
    reconstruction refuses to start."""
    from llmfab.quant.artifact import load_artifact, load_unrounded

    artifact = load_artifact(folder)
    if artifact.config != config:
        raise InputError(f"--qat-from {folder} holds a compressed {artifact.config.name or 'model'}, "
                         f"not {config.name or 'the model given'}; pass an artifact of the same model")
    mine, theirs = recipe.to_dict(), artifact.recipe.to_dict()
    differ = sorted(k for k in mine if k not in QAT_FIELDS and k != "name" and mine[k] != theirs.get(k))
    if differ:
        raise InputError(f"--qat-from {folder} was made with a different recipe ({', '.join(differ)}: "
                         f"{[theirs.get(k) for k in differ]} there, {[mine[k] for k in differ]} here); "
                         "use the same preset and options, or drop --qat-from to calibrate afresh")
    load_unrounded(folder, artifact.model)
    return artifact.model


def block_windows(tokenizer, recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(training windows ``[qat_block_samples, calib_seq_len]``, held-out windows
    ``[BLOCK_HELD_OUT, calib_seq_len]``) of block reconstruction: the held-out windows are the
    training text's last tokens (:func:`training_tokens`), the training windows spread evenly over
    the tokens before them (overlapping evenly when there are too few)."""
    from llmfab.quant.calibrate import spread_windows

    tokens = torch.tensor(training_tokens(tokenizer, recipe), dtype=torch.long)
    seq_len = recipe.calib_seq_len
    held = BLOCK_HELD_OUT * seq_len
    if len(tokens) < held + seq_len:
        raise InputError(f"block reconstruction needs at least {held + seq_len} calibration tokens "
                         f"({BLOCK_HELD_OUT} held-out windows and one training window of --calib-seq-len "
                         f"{seq_len}); the training text has {len(tokens)}: pass a longer --qat-text or "
                         "--calib-text, or a shorter --calib-seq-len")
    return (spread_windows(tokens[: len(tokens) - held], recipe.qat_block_samples, seq_len),
            tokens[len(tokens) - held :].view(BLOCK_HELD_OUT, seq_len))


@dataclass(frozen=True)
class QatRun:
    """What :func:`run_recipe_qat` did in this call: one block reconstruction report per layer
    trained (quant/block_ap.py ``LayerReport``) and the loss of every end-to-end step run."""

    block: list
    losses: list[float]


def run_recipe_qat(model: LlamaModel, checkpoint, recipe, checkpoint_path: Path, progress=None) -> QatRun:
    """Training of a post-training quantized ``model`` as its recipe says (teacher: the
    checkpoint's float weights; data: :func:`training_tokens`): block reconstruction first when
    ``qat_block_epochs`` > 0 (its per-layer checkpoint is ``checkpoint_path`` with the suffix
    ``.block.pt``), then ``qat_steps`` end-to-end QAT steps (checkpoint ``checkpoint_path``).
    Both checkpoints are removed when everything is done."""
    from llmfab.quant.block_ap import BlockConfig, block_reconstruction

    needs_teacher = recipe.qat_block_epochs or (recipe.qat_steps and recipe.qat_loss == "kl")
    teacher = LlamaModel.from_checkpoint(checkpoint) if needs_teacher else None
    block_path = block_checkpoint(checkpoint_path)
    reports: list = []
    if recipe.qat_block_epochs:
        config = BlockConfig(epochs=recipe.qat_block_epochs, lr=recipe.qat_block_lr,
                             scale_lr=recipe.qat_block_scale_lr)
        train, held = block_windows(checkpoint.tokenizer, recipe)
        reports = block_reconstruction(model, teacher, train, config, held, block_path, progress)
    losses: list[float] = []
    if recipe.qat_steps:
        config = QatConfig(steps=recipe.qat_steps, lr=recipe.qat_lr, scale_lr=recipe.qat_scale_lr,
                           loss=recipe.qat_loss, mode=QatMode(recipe.qat_mode))
        windows = training_windows(checkpoint.tokenizer, recipe, config.seq_len)
        losses = train_qat(model, teacher, windows, config, checkpoint_path, progress)
    checkpoint_path.unlink(missing_ok=True)
    block_path.unlink(missing_ok=True)
    return QatRun(reports, losses)


def block_checkpoint(checkpoint_path: Path) -> Path:
    """Where block reconstruction checkpoints next to the end-to-end checkpoint ``checkpoint_path``."""
    return checkpoint_path.with_suffix(".block.pt")
