"""Generation and perplexity through the runtime, on a scripted backend with the tiny tokenizer."""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch

from llmfab.commands.generate import stream
from llmfab.host.runtime import ProgramDecoder, act32_to_torch, window_logits
from llmfab.host.session import Sequence
from llmfab.quant.tokenizer import Tokenizer
from llmfab.tests.host.scripted_backend import ScriptedBackend, scripted_program


def generation_args(prompt: str, max_new_tokens: int) -> argparse.Namespace:
    return argparse.Namespace(prompt=prompt, chat=False, system=None, max_new_tokens=max_new_tokens,
                              temperature=0.0, top_k=0, top_p=1.0, seed=None)


def test_generation_streams_the_scripted_tokens_and_stops_at_the_end_of_sequence(tiny_hf_folder):
    tokenizer = Tokenizer.from_hf_folder(tiny_hf_folder)
    prompt = tokenizer.encode("The sea")
    words = tokenizer.encode(" was calm")
    script = [0] * 64
    for offset, token in enumerate(words):  # the token after position p is script[p]
        script[len(prompt) - 1 + offset] = token
    script[len(prompt) - 1 + len(words)] = tokenizer.eos_token_id
    backend = ScriptedBackend(scripted_program(max_prefill_tokens=2, vocab_size=tokenizer.vocab_size), script)
    out = io.StringIO()
    stats = stream(ProgramDecoder(Sequence(backend)), tokenizer, generation_args("The sea", 20), out)
    assert out.getvalue() == " was calm\n"
    assert stats["new_tokens"] == len(words) and stats["prompt_tokens"] == len(prompt)
    decodes = [run for run in backend.runs if run[0] == "decode"]
    assert [run[3][0] for run in decodes] == words  # each new token was fed back, then EOS ended it


def test_each_generation_and_each_perplexity_window_starts_a_fresh_sequence():
    backend = ScriptedBackend(scripted_program(max_prefill_tokens=4), script=list(range(16)))
    sequence = Sequence(backend)
    decoder = ProgramDecoder(sequence)
    assert decoder.max_context == 32
    first = decoder.prefill([1, 2, 3])
    decoder.step(int(first.argmax()))
    again = decoder.prefill([1, 2, 3])
    assert torch.equal(first, again) and backend.runs[-1][2] == 0
    logits = window_logits(sequence)(torch.tensor([[5, 6, 7, 8, 9, 10]]))
    assert logits.shape == (1, 6, 16) and backend.runs[-1][:3] == ("prefill", 2, 4)
    assert list(logits[0].argmax(-1)) == list(range(6))


def test_logits_are_converted_exactly():
    values = np.array([[-(1 << 31), 1, (1 << 31) - 1]], dtype=np.int64)
    assert act32_to_torch(values).tolist() == [[-32768.0, 1 / 65536, 32768 - 1 / 65536]]


def test_lambda_programs_generate_without_a_context_limit():
    decoder = ProgramDecoder(Sequence(ScriptedBackend(scripted_program(max_context=None), script=[3])))
    assert decoder.max_context > 10**9
