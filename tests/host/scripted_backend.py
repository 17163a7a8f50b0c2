"""A scripted device for testing the host driver without a model: the logits of a token at
stream position p make token ``script[p]`` the most likely next token, so generation follows the
script; every run is recorded."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from llmfab.compiler.program import RuntimeLimits
from llmfab.sim.fixed_point import ACT32


def scripted_program(max_prefill_tokens: int = 4, max_context: int | None = 32, vocab_size: int = 16):
    """The part of a Program the host driver reads: its folder and runtime limits."""
    window = None if max_context else 8
    limits = RuntimeLimits(max_prefill_tokens, max_context, vocab_size, None if max_context else 2, window)
    return SimpleNamespace(folder=Path("scripted"), limits=limits)


class ScriptedBackend:
    """Backend whose next-token argmax after stream position p is ``script[p % len(script)]``."""

    name = "scripted"

    def __init__(self, program, script: list[int]):
        self.program = program
        self.script = script
        self.runs: list[tuple[str, int, int, list[int]]] = []  # (routine, n_tokens, position, ids)
        self.resets = 0
        self.ids = np.zeros(0, dtype=np.int64)
        self.logits = None

    def reset(self) -> None:
        self.resets += 1

    def write_tokens(self, token_ids) -> None:
        self.ids = np.asarray(token_ids, dtype=np.int64)

    def start(self, routine: str, n_tokens: int, position: int):
        self.runs.append((routine, n_tokens, position, self.ids[:n_tokens].tolist()))
        vocab = self.program.limits.vocab_size
        logits = np.zeros((n_tokens, vocab), dtype=np.int64)
        for row in range(n_tokens):
            logits[row, self.script[(position + row) % len(self.script)]] = ACT32.from_float(5.0)
        self.logits = logits
        return {"routine": routine}

    def read_logits(self, n_tokens: int) -> np.ndarray:
        return self.logits[:n_tokens]
