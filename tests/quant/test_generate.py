"""Sampling rules and the generation loop."""

from __future__ import annotations

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.generate import Sampling, TorchDecoder, choose_token, generate
from llmfab.quant.hf_reader import read_hf_folder
from llmfab.quant.model import LlamaModel


class ScriptedDecoder:
    """Emits fixed logits favouring a scripted token sequence."""

    def __init__(self, script, vocab=10, max_context=100):
        self.script, self.vocab, self.max_context, self.i = script, vocab, max_context, 0

    def _logits(self):
        logits = torch.zeros(self.vocab)
        logits[self.script[min(self.i, len(self.script) - 1)]] = 5.0
        self.i += 1
        return logits

    def prefill(self, ids):
        return self._logits()

    def step(self, token):
        return self._logits()


def test_greedy_follows_argmax_and_stops_at_eos():
    out = list(generate(ScriptedDecoder([3, 4, 5, 2, 7]), [1], 10, stop_ids={2}))
    assert out == [3, 4, 5]


def test_max_new_tokens_bounds_output():
    assert list(generate(ScriptedDecoder([3] * 20), [1], 4)) == [3, 3, 3, 3]
    assert list(generate(ScriptedDecoder([3]), [1], 0)) == []


def test_sampling_is_seeded_and_truncated():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 0.5])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draws1 = [choose_token(logits, Sampling(1.0), g1) for _ in range(50)]
    draws2 = [choose_token(logits, Sampling(1.0), g2) for _ in range(50)]
    assert draws1 == draws2 and len(set(draws1)) > 1
    g = torch.Generator().manual_seed(0)
    assert {choose_token(logits, Sampling(1.0, top_k=2), g) for _ in range(100)} == {2, 3}
    # top-p 0.5: token 3 has probability ~0.61 alone
    assert {choose_token(logits, Sampling(1.0, top_p=0.5), g) for _ in range(100)} == {3}
    assert choose_token(logits, Sampling(1.0, top_k=1), g) == 3


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -1}, "--temperature"), ({"top_k": -2}, "--top-k"), ({"top_p": 0.0}, "--top-p"),
])
def test_bad_sampling_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        Sampling(**kwargs)


def test_prompt_longer_than_context():
    with pytest.raises(InputError, match="exceeds the context"):
        list(generate(ScriptedDecoder([1], max_context=8), list(range(6)), 5))
    with pytest.raises(InputError, match="prompt is empty"):
        list(generate(ScriptedDecoder([1]), [], 5))


def test_torch_decoder_matches_full_forward_greedy(tiny_hf_folder):
    config, weights, _ = read_hf_folder(tiny_hf_folder)
    model = LlamaModel.from_weights(config, weights)
    prompt = [5, 17, 42, 8]
    out = list(generate(TorchDecoder(model), prompt, 12))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]
