"""QAT with distillation: starts exactly at the post-training model, lowers the distillation loss,
keeps the 2:4 mask and the integer format, and resumes from its checkpoint deterministically."""

from __future__ import annotations

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.qat import QatConfig, QatLinear, distillation_loss, to_qat, train_qat
from llmfab.quant.qlinear import QuantLinear
from llmfab.quant.model import iter_linears
from llmfab.tests.quant.tiny_quantized import quantized_tiny, tiny_recipe


@pytest.fixture(scope="module")
def tiny_w2(tiny_hf_folder):
    return quantized_tiny(tiny_hf_folder, tiny_recipe("w2a8kv4", calib_samples=4))


@pytest.fixture(scope="module")
def tiny_sparse(tiny_hf_folder):
    return quantized_tiny(tiny_hf_folder, tiny_recipe("accllm", calib_samples=4))


def fresh_copy(fixture):
    """A deep copy of the quantized tiny model (training changes models in place)."""
    import copy

    checkpoint, teacher, student, windows = fixture
    return teacher, copy.deepcopy(student), windows


@pytest.mark.parametrize("which", ["tiny_w2", "tiny_sparse"])
def test_qat_module_starts_at_the_ptq_weights(which, request):
    _, student, _ = fresh_copy(request.getfixturevalue(which))
    before = {(l, n): m.weight.clone() for l, n, m in iter_linears(student)}
    for qat in to_qat(student):
        assert isinstance(qat, QatLinear)
    for layer, name, module in iter_linears(student):
        assert torch.allclose(module.dense_weight(), before[(layer, name)], atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_through_the_quantizer_fit_a_layer(sparse):
    """One QatLinear trained to imitate a nearby float layer: its error falls well below the
    post-training start (gradients reach latent weights and scales through brevitas and the mask)."""
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
    params = [layer.kept.weight, layer.kept.weight_quant.tensor_quant.scaling_impl.value]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    errors = []
    for _ in range(60):
        error = ((layer(x) - y) ** 2).mean()
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        errors.append(error.item())
    assert min(errors[-10:]) < 0.8 * errors[0]
    if sparse:
        frozen = layer.freeze()
        assert torch.equal(decode_2to4_mask(frozen.mask_codes), mask)
        assert torch.all(frozen.weight[~mask] == 0)


def test_training_changes_codes_and_keeps_format(tiny_sparse):
    teacher, student, windows = fresh_copy(tiny_sparse)
    before = {(l, n): m.codes.clone() for l, n, m in iter_linears(student)}
    masks = {(l, n): m.mask_codes.clone() for l, n, m in iter_linears(student)}
    losses = train_qat(student, teacher, windows, QatConfig(steps=5, batch_size=2, seq_len=24, lr=1e-3))
    assert len(losses) == 5 and all(loss >= 0 for loss in losses)
    changed = 0
    for layer, name, module in iter_linears(student):
        assert isinstance(module, QuantLinear)
        assert torch.equal(module.mask_codes, masks[(layer, name)])  # the 2:4 pattern is fixed
        assert module.codes.dtype == torch.uint8 and int(module.codes.max()) <= 3
        assert module.scales.dtype == torch.float16
        changed += int((module.codes != before[(layer, name)]).sum())
    assert changed > 0


def test_checkpoint_resume_is_deterministic(tiny_w2, tmp_path):
    config = QatConfig(steps=6, batch_size=2, seq_len=16, lr=1e-3, checkpoint_every=2)
    teacher, straight, windows = fresh_copy(tiny_w2)
    train_qat(straight, teacher, windows, config)

    _, resumed, _ = fresh_copy(tiny_w2)
    ckpt = tmp_path / "qat.pt"
    train_qat(resumed, teacher, windows, QatConfig(**{**config.__dict__, "steps": 4}), checkpoint=ckpt)
    _, resumed, _ = fresh_copy(tiny_w2)  # a new process would start from the PTQ model again
    losses = train_qat(resumed, teacher, windows, config, checkpoint=ckpt)
    assert len(losses) == 2  # steps 5 and 6 only
    for (_, _, a), (_, _, b) in zip(iter_linears(straight), iter_linears(resumed)):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_bad_qat_settings(tiny_w2):
    teacher, student, windows = fresh_copy(tiny_w2)
    with pytest.raises(InputError, match="teacher"):
        train_qat(student, None, windows, QatConfig(steps=1))
    with pytest.raises(InputError, match="exceeds the training windows"):
        train_qat(student, teacher, windows, QatConfig(steps=1, seq_len=windows.shape[1] + 1))
    with pytest.raises(InputError, match="loss"):
        QatConfig(steps=1, loss="mse")
