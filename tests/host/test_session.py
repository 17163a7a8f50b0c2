"""The host driver's sequence: prefill chunks, positions, limit checks (on a scripted backend)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.program import ProgramError
from llmfab.host.session import Sequence
from llmfab.sim.fixed_point import ACT32
from llmfab.tests.host.scripted_backend import ScriptedBackend, scripted_program


def test_prefill_runs_in_chunks_of_the_program_size_at_consecutive_positions():
    backend = ScriptedBackend(scripted_program(max_prefill_tokens=4), script=list(range(16)))
    sequence = Sequence(backend)
    logits = sequence.prefill(list(range(10)))
    assert [run[:3] for run in backend.runs] == [("prefill", 4, 0), ("prefill", 4, 4), ("prefill", 2, 8)]
    assert [run[3] for run in backend.runs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert logits.shape == (10, 16) and logits.dtype == np.int64
    assert list(logits.argmax(-1)) == list(range(10))  # row p comes from position p
    assert sequence.position == 10
    sequence.decode(3)
    assert backend.runs[-1] == ("decode", 1, 10, [3])
    assert sequence.totals.prefill_tokens == 10 and sequence.totals.decode_runs == 1


def test_last_logits_only_and_reset_restarts_at_position_zero():
    backend = ScriptedBackend(scripted_program(max_prefill_tokens=4), script=list(range(16)))
    sequence = Sequence(backend)
    last = sequence.prefill(list(range(7)), all_logits=False)
    assert last.shape == (1, 16) and last[0].argmax() == 6
    sequence.reset()
    assert sequence.position == 0 and backend.resets == 2  # one when opened, one now
    sequence.prefill([1])
    assert backend.runs[-1][:3] == ("prefill", 1, 0)
    assert ACT32.to_float(last).max() == 5.0


def test_a_prompt_past_a_dense_context_is_refused_before_anything_runs():
    backend = ScriptedBackend(scripted_program(max_context=32), script=[0])
    sequence = Sequence(backend)
    with pytest.raises(ProgramError, match=r"33 tokens at stream position 0 need positions 0\.\.32, past the context of scripted \(32 tokens"):
        sequence.prefill(list(range(33)))
    assert backend.runs == []
    sequence.prefill(list(range(31)))
    sequence.decode(0)  # position 31, the last one
    with pytest.raises(ProgramError, match="exceed the program's context of 32"):
        sequence.decode(0)


def test_lambda_programs_have_no_context_limit():
    backend = ScriptedBackend(scripted_program(max_context=None), script=[0])
    sequence = Sequence(backend)
    sequence.prefill(list(range(100)), all_logits=False)
    for _ in range(5):
        sequence.decode(1)
    assert sequence.position == 105 and len(backend.runs) == 25 + 5
