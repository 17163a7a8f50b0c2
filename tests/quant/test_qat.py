"""QAT with distillation: starts exactly at the post-training model, lowers the distillation loss on
held-out text, saves exactly what it trained, keeps the 2:4 mask and the integer format, and
resumes from its checkpoint deterministically."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llmfab.errors import InputError
from llmfab.quant.model import iter_linears
from llmfab.quant.qat import (
    QatConfig,
    QatLinear,
    QatMode,
    ScaleQatLinear,
    distillation_loss,
    from_qat,
    post_training_model,
    to_qat,
    train_qat,
    training_windows,
)
from llmfab.quant.qat_modules import QatHead
from llmfab.quant.qlinear import QuantLinear, fake_quant_per_token
from llmfab.tests.quant.tiny_quantized import EMMA_TRAINING, quantized_sharp_tiny, quantized_tiny, tiny_recipe

MODES = list(QatMode)
HELD_OUT = 4  # last training windows kept out of training, to measure the loss on


W2_G64 = 64


@pytest.fixture(scope="module")
def tiny_w2(tiny_hf_folder):
    # group 64 (W2_G64), not the preset's 32: the thresholds below were set on that harsher model
    return quantized_tiny(tiny_hf_folder, tiny_recipe("w2a8kv4", calib_samples=4, group_size=W2_G64, **EMMA_TRAINING))


@pytest.fixture(scope="module")
def tiny_sparse(tiny_hf_folder):
    return quantized_tiny(tiny_hf_folder, tiny_recipe("accllm", calib_samples=4, **EMMA_TRAINING))


@pytest.fixture(scope="module")
def sharp_w2(tiny_hf_folder):
    """Like tiny_w2, but from a sharpened float model (tiny_quantized.sharpened_tiny), with 32-token
    training windows of the whole calibration text."""
    recipe = tiny_recipe("w2a8kv4", calib_samples=4, group_size=W2_G64, **EMMA_TRAINING)
    checkpoint, teacher, student, _ = quantized_sharp_tiny(tiny_hf_folder, recipe)
    return checkpoint, teacher, student, training_windows(checkpoint.tokenizer, recipe, 32)


def fresh_copy(fixture):
    """(teacher, a deep copy of the quantized tiny model, its calibration windows)."""
    checkpoint, teacher, student, windows = fixture
    return teacher, copy.deepcopy(student), windows


@torch.no_grad()
def held_out_loss(student, teacher, windows) -> float:
    """Distillation loss per token on ``windows`` (not trained on)."""
    return distillation_loss(student(windows)[:, :-1], teacher(windows)[:, :-1], 1.0).item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["tiny_w2", "tiny_sparse"])
def test_qat_module_starts_at_the_ptq_weights(which, mode, request):
    _, student, windows = fresh_copy(request.getfixturevalue(which))
    before = {(l, n): m.weight.clone() for l, n, m in iter_linears(student)}
    with torch.no_grad():
        logits = student(windows[:2])
    for qat in to_qat(student, mode):
        assert isinstance(qat, QatLinear if mode is QatMode.WEIGHTS else ScaleQatLinear)
    assert isinstance(student.lm_head, QatHead)
    for layer, name, module in iter_linears(student):
        assert torch.allclose(module.dense_weight(), before[(layer, name)], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(student(windows[:2]), logits, atol=1e-4)


def test_head_passes_the_float_gradient_to_the_decoder(tiny_w2):
    """The fake-quant LM head rounds its input; in QAT its gradient must be the float head's
    (straight through), not torch.round's zero (which left only each token's max |x| a gradient)."""
    _, student, _ = fresh_copy(tiny_w2)
    head = student.lm_head
    x = torch.randn(3, 5, head.in_features, generator=torch.Generator().manual_seed(1), requires_grad=True)
    grad_out = torch.randn(3, 5, head.out_features, generator=torch.Generator().manual_seed(2))
    qat_head = QatHead(head)
    y = qat_head(x)
    assert torch.equal(y, head(x))  # same forward value, bit for bit
    (y * grad_out).sum().backward()
    assert torch.allclose(x.grad, grad_out @ head.weight, atol=1e-5)
    # what the frozen head alone gives: a gradient on one element per token, zero elsewhere
    x.grad = None
    (head(x) * grad_out).sum().backward()
    assert int((x.grad != 0).sum()) <= 3 * 5


@pytest.mark.parametrize("mode", MODES)
def test_qat_lowers_the_held_out_distillation_loss(sharp_w2, mode):
    """Training on some windows lowers the KL to the teacher on others, measured on the saved
    (frozen) model. Without the LM head's straight-through gradient (the first version) the same
    runs raise it (3.6 -> 4.6 .. 9.5 nats here, as on SmolLM2)."""
    teacher, student, windows = fresh_copy(sharp_w2)
    train, held = windows[:-HELD_OUT], windows[-HELD_OUT:]
    before = held_out_loss(student, teacher, held)
    config = QatConfig(steps=30, batch_size=4, seq_len=32, lr=1e-3, scale_lr=1e-2, mode=mode)
    train_qat(student, teacher, train, config)
    after = held_out_loss(student, teacher, held)
    assert all(isinstance(m, QuantLinear) for _, _, m in iter_linears(student))
    assert isinstance(student.lm_head, QuantLinear)
    assert after < 0.8 * before, (before, after)


def test_scale_training_saves_exactly_what_it_trained(tiny_sparse):
    """Scales mode: the frozen model's logits are the trained model's, bit for bit, and only the
    scales changed (codes, zero points and 2:4 patterns are the post-training ones)."""
    _, student, windows = fresh_copy(tiny_sparse)
    before = {(l, n): (m.codes.clone(), m.zeros.clone(), m.mask_codes.clone(), m.scales.clone())
              for l, n, m in iter_linears(student)}
    modules = to_qat(student, QatMode.SCALES)
    with torch.no_grad():
        for module in modules:
            module.scale.mul_(1.0 + 0.05 * torch.randn_like(module.scale))
        trained = student(windows[:2])
    from_qat(student)
    with torch.no_grad():
        assert torch.equal(student(windows[:2]), trained)
    for layer, name, module in iter_linears(student):
        codes, zeros, mask, scales = before[(layer, name)]
        assert torch.equal(module.codes, codes) and torch.equal(module.zeros, zeros)
        assert torch.equal(module.mask_codes, mask) and not torch.equal(module.scales, scales)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_through_the_quantizer_fit_a_layer(sparse):
    """One QatLinear trained to imitate a nearby float layer: its error falls well below the
    post-training start (gradients reach latent weights and scales through brevitas and the mask),
    and the frozen layer is the trained one up to the float16 rounding of its scales."""
    from llmfab.quant.sparse_index import decode_2to4_mask
    from llmfab.quant.sparsity import magnitude_2to4_mask
    from llmfab.quant.weight_quant import GroupQuantConfig, quantize_groupwise

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=gen) * 0.05
    mask = magnitude_2to4_mask(weight) if sparse else None
    target = weight + torch.randn(64, 128, generator=gen) * 0.02
    if sparse:
        target = target * mask
    layer = QatLinear(QuantLinear(quantize_groupwise(weight, GroupQuantConfig(bits=2, group_size=32), mask), 8))
    x = torch.randn(256, 128, generator=gen)
    y = x @ target.T
    weights, scales = layer.trainable()
    optimizer = torch.optim.Adam(weights + scales, lr=1e-3)
    errors = []
    for _ in range(60):
        error = ((layer(x) - y) ** 2).mean()
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        errors.append(error.item())
    assert min(errors[-10:]) < 0.8 * errors[0]
    frozen = layer.freeze()
    with torch.no_grad():
        trained = layer.dense_weight()
    close = (frozen.weight - trained).abs() <= 1e-3 * trained.abs().max()
    assert close.float().mean() > 0.99  # a code may flip only where the float16 scale moves it
    if sparse:
        assert torch.equal(decode_2to4_mask(frozen.mask_codes), mask)
        assert torch.all(frozen.weight[~mask] == 0)


def test_weight_training_changes_codes_and_keeps_format(tiny_sparse):
    teacher, student, windows = fresh_copy(tiny_sparse)
    before = {(l, n): m.codes.clone() for l, n, m in iter_linears(student)}
    masks = {(l, n): m.mask_codes.clone() for l, n, m in iter_linears(student)}
    zeros = {(l, n): m.zeros.clone() for l, n, m in iter_linears(student)}
    config = QatConfig(steps=5, batch_size=2, seq_len=24, lr=1e-3, mode=QatMode.WEIGHTS)
    losses = train_qat(student, teacher, windows, config)
    assert len(losses) == 5 and all(loss >= 0 for loss in losses)
    changed = 0
    for layer, name, module in iter_linears(student):
        assert isinstance(module, QuantLinear)
        assert torch.equal(module.mask_codes, masks[(layer, name)])  # the 2:4 pattern is fixed
        assert torch.equal(module.zeros, zeros[(layer, name)])  # integer zero points are kept
        assert module.codes.dtype == torch.uint8 and int(module.codes.max()) <= 3
        assert module.scales.dtype == torch.float16
        changed += int((module.codes != before[(layer, name)]).sum())
    assert changed > 0


class InterruptAfter:
    """A progress bar that stops the run (as Ctrl-C would) after ``count`` steps."""

    def __init__(self, count):
        self.count = count

    def __call__(self, steps, **kwargs):
        self.steps = steps
        return self

    def __iter__(self):
        for done, step in enumerate(self.steps):
            if done == self.count:
                raise KeyboardInterrupt
            yield step

    def set_postfix(self, **values):
        pass


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_resume_is_deterministic(tiny_w2, tmp_path, mode):
    """A run interrupted after step 4 and resumed from its checkpoint ends where an uninterrupted
    run does (same batches, same learning-rate schedule, same optimizer state)."""
    config = QatConfig(steps=6, batch_size=2, seq_len=16, lr=1e-3, scale_lr=1e-2, checkpoint_every=2,
                       mode=mode)
    teacher, straight, windows = fresh_copy(tiny_w2)
    straight_losses = train_qat(straight, teacher, windows, config)

    _, interrupted, _ = fresh_copy(tiny_w2)
    ckpt = tmp_path / "qat.pt"
    with pytest.raises(KeyboardInterrupt):
        train_qat(interrupted, teacher, windows, config, checkpoint=ckpt, progress=InterruptAfter(4))
    assert all(isinstance(m, QuantLinear) for _, _, m in iter_linears(interrupted))  # left usable
    _, resumed, _ = fresh_copy(tiny_w2)  # a new process would start from the PTQ model again
    losses = train_qat(resumed, teacher, windows, config, checkpoint=ckpt)
    assert losses == straight_losses[4:]  # steps 5 and 6 only, bit for bit
    for (_, _, a), (_, _, b) in zip(iter_linears(straight), iter_linears(resumed)):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_progress_bar_shows_the_loss(tiny_w2):
    teacher, student, windows = fresh_copy(tiny_w2)
    shown = []

    class Bar:
        def __init__(self, steps, **kwargs):
            self.steps, self.kwargs = steps, kwargs

        def __iter__(self):
            return iter(self.steps)

        def set_postfix(self, **values):
            shown.append(values)

    losses = train_qat(student, teacher, windows, QatConfig(steps=2, batch_size=1, seq_len=8), progress=Bar)
    assert [float(v["loss"]) for v in shown] == pytest.approx(losses, abs=1e-4)


def test_post_training_model_checks_the_recipe(tiny_w2, tiny_hf_folder, tmp_path):
    from llmfab.quant.artifact import save_artifact

    checkpoint, _, student, _ = tiny_w2
    recipe = tiny_recipe("w2a8kv4", calib_samples=4, group_size=W2_G64, **EMMA_TRAINING)
    save_artifact(tmp_path / "ptq", student, recipe, checkpoint.tokenizer)
    loaded = post_training_model(tmp_path / "ptq", checkpoint.config, tiny_recipe("w2a8kv4", calib_samples=4,
                                                                                   group_size=W2_G64, qat_steps=3,
                                                                                   qat_mode="weights"))
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.codes, student.model.layers[0].mlp.up_proj.codes)
    with pytest.raises(InputError, match="group_size"):
        post_training_model(tmp_path / "ptq", checkpoint.config, tiny_recipe("w2a8kv4", calib_samples=4,
                                                                              group_size=32))


def test_training_windows_cover_the_text(tiny_w2):
    checkpoint, *_ = tiny_w2
    windows = training_windows(checkpoint.tokenizer, tiny_recipe("w2a8kv4"), 32)
    assert windows.shape[1] == 32 and windows.shape[0] > HELD_OUT


def test_bad_qat_settings(tiny_w2):
    teacher, student, windows = fresh_copy(tiny_w2)
    with pytest.raises(InputError, match="teacher"):
        train_qat(student, None, windows, QatConfig(steps=1))
    with pytest.raises(InputError, match="exceeds the training windows"):
        train_qat(student, teacher, windows, QatConfig(steps=1, seq_len=windows.shape[1] + 1))
    with pytest.raises(InputError, match="loss"):
        QatConfig(steps=1, loss="mse")
    with pytest.raises(InputError, match="mode"):
        QatConfig(steps=1, mode="codes")


def test_straight_through_activation_quantizer_is_exact():
    from llmfab.quant.qat_modules import quantize_input

    x = torch.randn(4, 33, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = quantize_input(x, 8)
    assert torch.equal(y, fake_quant_per_token(x.detach(), 8))
    F.mse_loss(y, torch.zeros_like(y), reduction="sum").backward()
    assert torch.allclose(x.grad, 2 * y.detach())
