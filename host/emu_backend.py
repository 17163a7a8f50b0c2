"""The ``emu`` backend: the instruction-level emulator (sim/emulator.py) behind the Backend calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llmfab.compiler.program import Program
    from llmfab.host.backend import BackendOptions


class EmuBackend:
    """Runs a program's routines instruction by instruction on modelled buffers and HBM images."""

    name = "emu"

    def __init__(self, program: "Program", options: "BackendOptions"):
        from llmfab.sim.emulator import Emulator

        self.program = program
        self.emulator = Emulator(program)

    def reset(self) -> None:
        self.emulator.reset()

    def write_tokens(self, token_ids: np.ndarray) -> None:
        self.emulator.write_tokens(np.asarray(token_ids, dtype=np.int64))

    def start(self, routine: str, n_tokens: int, position: int):
        return self.emulator.start(routine, n_tokens, position)

    def read_logits(self, n_tokens: int) -> np.ndarray:
        return self.emulator.read_logits(n_tokens)
