"""Block-wise reconstruction (EfficientQAT's Block-AP): lowers every layer's held-out output error
and the model's held-out distillation loss, keeps the integer format and the 2:4 masks, resumes from
its per-layer checkpoint bit for bit, and runs from the recipe and the CLI before the end-to-end step."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from llmfab.cli import main
from llmfab.errors import InputError
from llmfab.quant.block_ap import BlockConfig, block_reconstruction
from llmfab.quant.model import iter_linears
from llmfab.quant.qat import block_windows, distillation_loss
from llmfab.quant.qlinear import QuantLinear
from llmfab.quant.recipe import Recipe
from llmfab.tests.quant.tiny_quantized import EMMA_TRAINING, quantized_sharp_tiny, tiny_recipe

FAST = BlockConfig(epochs=2, lr=2e-3, scale_lr=1e-3)


@pytest.fixture(scope="module", params=["w2a8kv4", "accllm"])
def sharp(tiny_hf_folder, request):
    """(teacher, post-training student, training windows, held-out windows) of the sharpened tiny model."""
    # group 64 for both: the thresholds were set on it (w2a8kv4's preset groups are 32 now)
    recipe = tiny_recipe(request.param, calib_samples=4, qat_block_samples=64, group_size=64, **EMMA_TRAINING)
    checkpoint, teacher, student, _ = quantized_sharp_tiny(tiny_hf_folder, recipe)
    train, held = block_windows(checkpoint.tokenizer, recipe)
    return teacher, student, train, held


def fresh(fixture):
    teacher, student, train, held = fixture
    return teacher, copy.deepcopy(student), train, held


def stored(model) -> dict:
    return {(layer, name): (m.codes.clone(), m.scales.clone(), m.zeros.clone(),
                            None if m.mask_codes is None else m.mask_codes.clone())
            for layer, name, m in iter_linears(model)}


@torch.no_grad()
def held_out_kl(student, teacher, windows) -> float:
    return distillation_loss(student(windows)[:, :-1], teacher(windows)[:, :-1], 1.0).item()


def test_reconstruction_lowers_layer_errors_and_the_held_out_loss(sharp):
    teacher, student, train, held = fresh(sharp)
    before_kl = held_out_kl(student, teacher, held)
    before = stored(student)
    reports = block_reconstruction(student, teacher, train, FAST, held)
    assert [r.layer for r in reports] == [0, 1]
    for report in reports:
        assert len(report.losses) == FAST.epochs * len(train) // FAST.batch_size
        assert report.held_out_after < 0.9 * report.held_out_before, report
    assert held_out_kl(student, teacher, held) < 0.8 * before_kl
    changed = 0
    for key, (codes, scales, zeros, mask) in stored(student).items():
        old_codes, _, old_zeros, old_mask = before[key]
        assert torch.equal(zeros, old_zeros)  # integer zero points are kept
        assert (mask is None) == (old_mask is None) and (mask is None or torch.equal(mask, old_mask))
        assert codes.dtype == torch.uint8 and codes.shape == old_codes.shape and int(codes.max()) <= 3
        assert scales.dtype == torch.float16
        changed += int((codes != old_codes).sum())
    assert changed > 0  # codes move, not only scales
    assert all(isinstance(m, QuantLinear) for _, _, m in iter_linears(student))
    assert not any(p.requires_grad for p in student.parameters())


def test_held_out_error_is_that_of_the_saved_layer(sharp):
    """The reported 'after' error is the frozen (saved) layer's own: re-running layer 0 of the
    result on the held-out windows' embeddings gives the same number."""
    import torch.nn.functional as F

    from llmfab.quant.calibrate import run_layer

    teacher, student, train, held = fresh(sharp)
    report = block_reconstruction(student, teacher, train, FAST, held)[0]
    cos, sin = student.model.rotary(torch.arange(held.shape[1]).unsqueeze(0))
    with torch.no_grad():
        target = run_layer(teacher.model.layers[0], teacher.model.embed_tokens(held).float(), cos, sin)
        output = run_layer(student.model.layers[0], student.model.embed_tokens(held).float(), cos, sin)
    assert F.mse_loss(output, target).item() == pytest.approx(report.held_out_after, rel=1e-6)


class InterruptAtLayer:
    """A progress factory that stops the run (as Ctrl-C would) at the third step of layer ``layer``."""

    def __init__(self, layer):
        self.layer, self.calls = layer, 0

    def __call__(self, steps, **kwargs):
        self.calls += 1
        self.steps, self.stop = steps, self.calls > self.layer
        return self

    def __iter__(self):
        for done, step in enumerate(self.steps):
            if self.stop and done == 2:
                raise KeyboardInterrupt
            yield step

    def set_postfix(self, **values):
        pass


def test_resume_from_the_layer_checkpoint_is_bit_exact(sharp, tmp_path):
    teacher, straight, train, held = fresh(sharp)
    straight_reports = block_reconstruction(straight, teacher, train, FAST, held)

    ckpt = tmp_path / "block.pt"
    _, interrupted, _, _ = fresh(sharp)
    with pytest.raises(KeyboardInterrupt):
        block_reconstruction(interrupted, teacher, train, FAST, held, ckpt, progress=InterruptAtLayer(1))
    assert torch.load(ckpt, weights_only=True)["done"] == 1
    assert all(isinstance(m, QuantLinear) for _, _, m in iter_linears(interrupted))  # left usable

    _, resumed, _, _ = fresh(sharp)  # a new process starts from the post-training model again
    reports = block_reconstruction(resumed, teacher, train, FAST, held, ckpt)
    assert [r.layer for r in reports] == [1]  # layer 0 came from the checkpoint
    assert reports[0].losses == straight_reports[1].losses
    assert reports[0].held_out_after == straight_reports[1].held_out_after
    for key, tensors in stored(straight).items():
        for a, b in zip(tensors, stored(resumed)[key]):
            assert (a is None and b is None) or torch.equal(a, b)
    _, again, _, _ = fresh(sharp)  # a complete checkpoint restores every layer without training
    assert block_reconstruction(again, teacher, train, FAST, held, ckpt) == []
    with torch.no_grad():
        assert torch.equal(again(held), straight(held))


def test_checkpoint_of_other_settings_is_refused(sharp, tmp_path):
    teacher, student, train, held = fresh(sharp)
    ckpt = tmp_path / "block.pt"
    with pytest.raises(KeyboardInterrupt):
        block_reconstruction(student, teacher, train, FAST, held, ckpt, progress=InterruptAtLayer(1))
    _, student, _, _ = fresh(sharp)
    with pytest.raises(InputError, match="other --qat-block-\\* settings; delete it"):
        block_reconstruction(student, teacher, train, dataclasses.replace(FAST, lr=2 * FAST.lr), held, ckpt)
    with pytest.raises(InputError, match="other\\s+calibration windows"):
        block_reconstruction(student, teacher, train[1:], FAST, held, ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read.*delete it"):
        block_reconstruction(student, teacher, train, FAST, held, ckpt)


def test_latent_weights_must_start_off_the_grid(sharp):
    """Without GPTQ's unrounded weights (a saved artifact has none) the latent weights would start
    on the grid, where the scales get no gradient: refused with the fix."""
    teacher, student, train, held = fresh(sharp)
    student.model.layers[1].mlp.down_proj.unrounded = None
    with pytest.raises(InputError, match="unrounded weights.*drop --qat-from"):
        block_reconstruction(student, teacher, train, FAST, held)


def test_progress_bar_shows_the_loss(sharp):
    teacher, student, train, _ = fresh(sharp)
    shown, descriptions = [], []

    def bar(steps, **kwargs):
        descriptions.append(kwargs["desc"])

        class Bar:
            def __iter__(self):
                return iter(steps)

            def set_postfix(self, **values):
                shown.append(float(values["loss"]))
        return Bar()

    reports = block_reconstruction(student, teacher, train[:4], BlockConfig(epochs=1), progress=bar)
    assert descriptions == ["block 1/2", "block 2/2"]
    assert shown == pytest.approx([loss for r in reports for loss in r.losses], rel=1e-3)
    assert all(r.held_out_before is None for r in reports)  # no held-out windows given


def test_bad_block_settings(tiny_hf_folder, tmp_path):
    from llmfab.quant.checkpoint import load_checkpoint

    for option, value, match in [("qat_block_epochs", -1, "--qat-block-epochs"),
                                 ("qat_block_samples", 0, "--qat-block-samples"),
                                 ("qat_block_lr", 0.0, "--qat-block-lr"),
                                 ("qat_block_scale_lr", -1e-3, "--qat-block-scale-lr")]:
        with pytest.raises(InputError, match=match):
            Recipe.from_preset("w2a8kv4", **{option: value})
    with pytest.raises(InputError, match="--qat-block-epochs must be at least 1"):
        BlockConfig(epochs=0)
    tokenizer = load_checkpoint(str(tiny_hf_folder), use_cache=False).tokenizer
    short = tmp_path / "short.txt"
    short.write_text("The sea was calm. " * 4)
    with pytest.raises(InputError, match="block reconstruction needs at least 96 calibration tokens.*--calib-text"):
        block_windows(tokenizer, tiny_recipe("w2a8kv4", calib_texts=[str(short)], qat_block_epochs=1))


def test_cli_runs_block_reconstruction_then_the_end_to_end_step(tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "w2"
    common = ["--calib-samples", "2", "--calib-seq-len", "32"]
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(out), *common,
                 "--qat-block-epochs", "1", "--qat-block-samples", "4", "--qat-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "block reconstruction: 2 layers, held-out output MSE" in err and "QAT: 2 steps" in err
    assert not (tmp_path / "w2.qat.pt").exists() and not (tmp_path / "w2.qat.block.pt").exists()
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]
    assert (recipe["qat_block_epochs"], recipe["qat_block_samples"], recipe["qat_steps"]) == (1, 4, 2)

    ptq = tmp_path / "ptq"
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(ptq), *common,
                 "--qat-steps", "0", "--qat-block-epochs", "0"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(tmp_path / "b"), *common,
                 "--qat-steps", "0", "--qat-block-epochs", "1", "--qat-block-samples", "4",
                 "--qat-from", str(ptq)]) == 2  # an artifact has no unrounded weights to start from
    assert "drop --qat-from (calibrate afresh)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(["quantize", str(tiny_hf_folder), "--preset", "w2a8kv4", "-o", str(tmp_path / "c"), *common,
                 "--qat-steps", "0", "--qat-block-epochs", "0", "--qat-from", str(ptq)]) == 2
    assert "give --qat-steps N or --qat-block-epochs N" in capsys.readouterr().err
