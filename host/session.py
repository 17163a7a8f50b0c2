"""One token stream on a backend: the host driver's view of a sequence.

:class:`Sequence` keeps the stream position, splits a prompt into prefill chunks of at most
``limits.max_prefill_tokens`` tokens, runs decode steps, and checks every run against the
program's limits before it starts (positions beyond a dense program's context, chunk sizes). The
KV cache itself — dense, or Λ sink slots plus ring buffer — stays in device memory. With Λ caches
and per-token KV4 the logits do not depend on how a prompt is split into runs; with dense
per-channel key blocks they depend on where chunks end (docs/numerics.md §6.4, docs/runtime.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from llmfab.host.backend import Backend


@dataclass
class RunTotals:
    """Routine runs and tokens processed since the sequence object was made, with wall time."""

    prefill_runs: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_runs: int = 0
    decode_seconds: float = 0.0


class Sequence:
    """A stream of tokens through ``backend``: prefill chunks and decode steps at the right positions."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.program = backend.program
        self.limits = backend.program.limits
        self.position = 0
        self.totals = RunTotals()
        self.last_stats = None  # the backend's statistics of the last routine run
        backend.reset()

    def reset(self) -> None:
        """Start a new sequence (empty cache, position 0)."""
        self.backend.reset()
        self.position = 0

    def check_room(self, n_tokens: int) -> None:
        """ProgramError if ``n_tokens`` more tokens would pass the end of a dense program's context
        (checked for a whole prompt before its first chunk runs)."""
        from llmfab.compiler.program import ProgramError

        limit = self.limits.max_context
        if limit is not None and self.position + n_tokens > limit:
            raise ProgramError(
                f"{n_tokens} tokens at stream position {self.position} need positions {self.position}.."
                f"{self.position + n_tokens - 1}, past the context of {self.program.folder} ({limit} tokens, "
                "dense attention); use a shorter prompt or text window, or compile a Λ-attention model "
                "(e.g. --preset accllm), whose context is unbounded"
            )

    def prefill(self, token_ids, all_logits: bool = True) -> np.ndarray:
        """Append ``token_ids`` to the stream; int64 ACT32 logits ``[n, vocab]`` of every token
        (or ``[1, vocab]`` of the last one when ``all_logits`` is False)."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("prefill of no tokens")
        self.check_room(ids.size)
        chunk = self.limits.max_prefill_tokens
        outputs = []
        for begin in range(0, ids.size, chunk):
            part = ids[begin : begin + chunk]
            last_chunk = begin + chunk >= ids.size
            logits = self._run("prefill", part)
            if all_logits:
                outputs.append(logits)
            elif last_chunk:
                outputs.append(logits[-1:])
        return np.concatenate(outputs, axis=0)

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; its int64 ACT32 logits ``[vocab]``."""
        return self._run("decode", np.array([token_id], dtype=np.int64))[0]

    def _run(self, routine: str, ids: np.ndarray) -> np.ndarray:
        self.limits.check_run(routine, ids.size, self.position)
        start = time.perf_counter()
        self.backend.write_tokens(ids)
        stats = self.backend.start(routine, ids.size, self.position)
        logits = self.backend.read_logits(ids.size)
        seconds = time.perf_counter() - start
        self.position += ids.size
        totals = self.totals
        if routine == "prefill":
            totals.prefill_runs += 1
            totals.prefill_tokens += ids.size
            totals.prefill_seconds += seconds
        else:
            totals.decode_runs += 1
            totals.decode_seconds += seconds
        self.last_stats = stats
        return logits
