"""The reference forward pass against transformers' LlamaForCausalLM (fp32, max abs 1e-4),
on random tiny configs (GQA, tied/untied, llama3/linear RoPE scaling) and decoding with a cache."""

from __future__ import annotations

import pytest
import torch

from llmfab.quant.config import ModelConfig
from llmfab.quant.hf_reader import read_hf_folder
from llmfab.quant.model import LlamaModel, iter_linears, replace_linear
from llmfab.tests.fixtures.tiny_models import TINY_CONFIGS, write_tiny_hf_folder


def load_both(folder):
    from transformers import LlamaForCausalLM

    config, weights, _ = read_hf_folder(folder)
    ours = LlamaModel.from_weights(config, weights)
    theirs = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return ours, theirs


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    ours, theirs = load_both(write_tiny_hf_folder(tmp_path, TINY_CONFIGS[name]))
    torch.manual_seed(0)
    # longer than original_max_position_embeddings so the llama3 scaling matters
    ids = torch.randint(0, ours.config.vocab_size, (2, 100))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_rope_scaling_is_applied(tmp_path):
    """Guard against a scaling variant being silently ignored: changing it changes logits."""
    folder = write_tiny_hf_folder(tmp_path, TINY_CONFIGS["gqa-llama3"])
    config, weights, _ = read_hf_folder(folder)
    plain = ModelConfig.from_dict({**config.to_dict(), "rope_scaling": {}})
    ids = torch.randint(0, config.vocab_size, (1, 100))
    with torch.no_grad():
        a = LlamaModel.from_weights(config, weights)(ids)
        b = LlamaModel.from_weights(plain, weights)(ids)
    assert (a - b).abs().max() > 1e-3


def test_cached_decoding_equals_full_forward(tiny_hf_folder):
    ours, _ = load_both(tiny_hf_folder)
    ids = torch.randint(0, ours.config.vocab_size, (1, 40))
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache()
        parts = [ours(ids[:, :17], cache)]  # prefill, then uneven chunks, then single tokens
        parts.append(ours(ids[:, 17:30], cache))
        parts += [ours(ids[:, i : i + 1], cache) for i in range(30, 40)]
    stepped = torch.cat(parts, dim=1)
    assert cache.position == 40
    assert (full - stepped).abs().max().item() <= 1e-4


def test_linears_are_swappable(tiny_hf_folder):
    ours, _ = load_both(tiny_hf_folder)
    found = list(iter_linears(ours))
    assert len(found) == 7 * ours.config.num_layers
    ids = torch.randint(0, ours.config.vocab_size, (1, 8))
    with torch.no_grad():
        before = ours(ids)
        replace_linear(ours, 0, "down_proj", ZeroLinear(ours.config.hidden_size))
        after = ours(ids)
    assert not torch.allclose(before, after)


class ZeroLinear(torch.nn.Module):
    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], self.out_features)
