"""The seam between the host runtime and whatever executes a compiled program.

A backend behaves like the accelerator seen from the host through device memory and a control
register block: the host writes token ids into the program's input region, starts a routine
(``prefill`` of up to ``limits.max_prefill_tokens`` tokens or one ``decode`` step) with the runtime
registers ``n_tokens`` and ``position`` (the stream position of the first token), waits for it to
finish, and reads the ACT32 logits back from the output region. The KV cache (dense, or the Λ sink
slots plus ring buffer) lives in device memory; the host only tracks the stream position.

The host checks every run against ``program.limits`` (RuntimeLimits.check_run) before it starts
it. Backends are found by name in :data:`BACKENDS`. ``emu`` (the instruction-level emulator) and
``reference`` (the integer reference model the emulator must equal bit for bit) exist today; an RTL
simulation (``cocotb``) and the board through XRT (``xrt``) slot in as further rows with the same
four calls.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llmfab.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from llmfab.compiler.program import Program

class Backend(Protocol):
    """What the runtime needs from an executor of a compiled program (one sequence at a time)."""

    name: str
    program: "Program"

    def reset(self) -> None:
        """Start a new sequence: the device KV cache is emptied (stream position 0)."""

    def write_tokens(self, token_ids: "np.ndarray") -> None:
        """Write int token ids (at most ``limits.max_prefill_tokens``) into the input region."""

    def start(self, routine: str, n_tokens: int, position: int) -> object:
        """Run ``routine`` ("prefill" or "decode") on the written tokens to its end; returns the
        backend's run statistics (instructions, bytes, cycles where known)."""

    def read_logits(self, n_tokens: int) -> "np.ndarray":
        """int64 ACT32 logits ``[n_tokens, vocab]`` of the last run's first ``n_tokens`` tokens."""


@dataclass(frozen=True)
class BackendOptions:
    """Settings some backends need; each backend ignores what it does not use.

    artifact: the compressed-model folder the program was compiled from (``reference``).
    """

    artifact: Path | None = None


@dataclass(frozen=True)
class BackendSpec:
    """One row of the backend table: its name, what it is, and the class that implements it
    (``module:Class``, imported only when the backend is opened)."""

    name: str
    description: str
    implementation: str

    def open(self, program: "Program", options: BackendOptions) -> Backend:
        module_name, class_name = self.implementation.split(":")
        backend_class = getattr(importlib.import_module(module_name), class_name)
        return backend_class(program, options)


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("emu", "instruction-level emulator of the engine (sim/emulator.py), the golden model",
                "llmfab.host.emu_backend:EmuBackend"),
    BackendSpec("reference", "integer reference model (sim/integer_model.py) built from the artifact the "
                "program was compiled from; for cross-checking the emulator",
                "llmfab.host.reference_backend:ReferenceBackend"),
)


def backend_names() -> list[str]:
    """Names of the known backends, in table order."""
    return [spec.name for spec in BACKENDS]


def backend_spec(name: str) -> BackendSpec:
    """The table row of backend ``name``; InputError listing the known ones if there is none."""
    for spec in BACKENDS:
        if spec.name == name:
            return spec
    raise InputError(f"unknown backend {name!r}; known backends: {', '.join(backend_names())}")


def open_backend(name: str, program: "Program", options: BackendOptions = BackendOptions()) -> Backend:
    """Open backend ``name`` on a loaded ``program``."""
    return backend_spec(name).open(program, options)

