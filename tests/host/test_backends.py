"""The emu and reference backends on the tiny model's program: bit-exact agreement, chunked
prefill against decode steps and against one unchunked forward, and clear errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from llmfab.compiler.program import ProgramError, load_program
from llmfab.errors import InputError
from llmfab.host.backend import BackendOptions, backend_names, open_backend
from llmfab.host.session import Sequence
from llmfab.quant.artifact import load_artifact
from llmfab.sim.integer_weights import integer_model_from_artifact


def stream_ids(vocab_size: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, n)


@pytest.fixture(scope="module")
def opened(tiny_program):
    artifact, folder = tiny_program
    program = load_program(folder)
    emu = open_backend("emu", program)
    reference = open_backend("reference", program, BackendOptions(artifact=artifact))
    return program, emu, reference


def test_emulator_equals_the_reference_bit_for_bit_across_prefill_chunks_and_decode(opened):
    program, emu, reference = opened
    chunk = program.limits.max_prefill_tokens
    ids = stream_ids(program.limits.vocab_size, chunk + 9)
    results = []
    for backend in (emu, reference):
        sequence = Sequence(backend)
        prefill = sequence.prefill(ids[:-3])
        steps = [sequence.decode(int(token)) for token in ids[-3:]]
        results.append((prefill, np.stack(steps)))
    assert results[0][0].shape == (chunk + 6, program.limits.vocab_size)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_chunked_prefill_equals_one_forward(opened, tiny_program):
    program, emu, _ = opened
    ids = stream_ids(program.limits.vocab_size, program.limits.max_prefill_tokens + 5, seed=1)
    chunked = Sequence(emu).prefill(ids)
    whole = integer_model_from_artifact(load_artifact(tiny_program[0])).forward(ids)
    np.testing.assert_array_equal(chunked, whole)


def test_chunked_prefill_equals_decode_steps_when_tokens_are_quantized_one_by_one(tiny_per_token_program):
    """Per-channel key blocks completed inside a prefill chunk are read quantized by the chunk's
    earlier queries (docs/numerics.md §6.4), so the property needs per-token keys when dense."""
    program = load_program(tiny_per_token_program[1])
    sequence = Sequence(open_backend("emu", program))
    ids = stream_ids(program.limits.vocab_size, 20, seed=2)  # multi-chunk prefill: the test above
    chunked = sequence.prefill(ids)
    sequence.reset()
    stepped = [sequence.prefill(ids[:1])[0]] + [sequence.decode(int(t)) for t in ids[1:]]
    np.testing.assert_array_equal(np.stack(stepped), chunked)


def test_lambda_program_streams_past_the_window_bit_exact_in_chunks_and_steps(tiny_lambda_program):
    """Λ: the ring lives in device memory, the host only passes positions; no context limit, and a
    prefill in chunks equals one decode step per token (docs/numerics.md §13.3)."""
    artifact, folder = tiny_lambda_program
    program = load_program(folder)
    assert program.limits.max_context is None and program.limits.window == 16
    emu = Sequence(open_backend("emu", program))
    reference = Sequence(open_backend("reference", program, BackendOptions(artifact=artifact)))
    ids = stream_ids(program.limits.vocab_size, program.limits.max_prefill_tokens + 40, seed=3)
    chunked = emu.prefill(ids)
    np.testing.assert_array_equal(chunked, reference.prefill(ids))
    emu.reset()
    stepped = [emu.prefill(ids[:1])[0]] + [emu.decode(int(t)) for t in ids[1:48]]
    np.testing.assert_array_equal(np.stack(stepped), chunked[:48])


def test_a_prompt_longer_than_the_dense_context_is_a_clear_error(opened):
    program, emu, _ = opened
    context = program.limits.max_context
    assert context is not None  # w4a8kv4 is dense
    with pytest.raises(ProgramError, match=f"past the context of .* \\({context} tokens, dense attention\\)"):
        Sequence(emu).prefill(stream_ids(program.limits.vocab_size, context + 1))


def test_unknown_backend_lists_the_known_ones(opened):
    with pytest.raises(InputError, match="unknown backend 'xrt'; known backends: emu, reference"):
        open_backend("xrt", opened[0])
    assert backend_names()[0] == "emu"


def test_the_reference_backend_needs_the_artifact_the_program_came_from(opened, tiny_program):
    program = opened[0]
    with pytest.raises(ProgramError, match="needs the artifact .* pass it with --artifact DIR"):
        open_backend("reference", program)
    other_recipe = {**program.manifest["recipe"], "weight_bits": 2}
    other = dataclasses.replace(program, manifest={**program.manifest, "recipe": other_recipe})
    with pytest.raises(ProgramError, match="has another model recipe than program"):
        open_backend("reference", other, BackendOptions(artifact=tiny_program[0]))
