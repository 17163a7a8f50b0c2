"""Host runtime: open a compiled program on a backend, with its tokenizer, and drive it.

Generation reuses the model-independent loop of :mod:`llmfab.quant.generate` (sampling rules, stop
tokens) through :class:`ProgramDecoder`; perplexity reuses :func:`llmfab.quant.perplexity.perplexity`
with :func:`window_logits`, which runs every window as a fresh sequence (reset + chunked prefill),
so the KV cache formats and Λ attention act exactly as they do when generating.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from llmfab.host.backend import Backend, BackendOptions, open_backend
from llmfab.host.session import Sequence

if TYPE_CHECKING:
    from llmfab.compiler.program import Program
    from llmfab.quant.tokenizer import Tokenizer

@dataclass(frozen=True, eq=False)
class Runtime:
    """A program opened on a backend: its tokenizer and the one sequence it runs."""

    program: "Program"
    backend: Backend
    tokenizer: "Tokenizer"
    sequence: Sequence


def open_runtime(program_folder: Path | str, backend: str = "emu",
                 options: BackendOptions = BackendOptions()) -> Runtime:
    """Load (and verify) the program in ``program_folder`` and open it on ``backend``."""
    from llmfab.compiler.program import load_program

    program = load_program(program_folder)
    device = open_backend(backend, program, options)
    return Runtime(program, device, load_program_tokenizer(program), Sequence(device))


def load_program_tokenizer(program: "Program") -> "Tokenizer":
    """The tokenizer the compiler copied from the artifact into the program folder."""
    from llmfab.compiler.program import TOKENIZER, ProgramError
    from llmfab.quant.tokenizer import Tokenizer

    path = program.tokenizer_dir / TOKENIZER
    if not path.is_file():
        raise ProgramError(f"{path} is missing; the program folder is incomplete, run llmfab compile again")
    return Tokenizer.from_json(path.read_text(encoding="utf-8"))


def act32_to_torch(logits: np.ndarray) -> torch.Tensor:
    """int64 ACT32 logits -> float64 torch logits (value / 2**16, exact)."""
    from llmfab.sim.fixed_point import ACT32

    return torch.from_numpy(ACT32.to_float(logits))


class ProgramDecoder:
    """:class:`llmfab.quant.generate.Decoder` over a sequence: prefill starts a new sequence."""

    def __init__(self, sequence: Sequence):
        self.sequence = sequence
        limit = sequence.limits.max_context
        self.max_context = limit if limit is not None else sys.maxsize  # Λ: no limit

    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.sequence.reset()
        return act32_to_torch(self.sequence.prefill(ids, all_logits=False)[-1])

    def step(self, token: int) -> torch.Tensor:
        return act32_to_torch(self.sequence.decode(token))


def window_logits(sequence: Sequence) -> Callable[[torch.Tensor], torch.Tensor]:
    """``ids [1, T] -> logits [1, T, vocab]`` through a fresh sequence per call (for perplexity)."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        sequence.reset()
        return act32_to_torch(sequence.prefill(ids[0].numpy()))[None]

    return logits


def describe_program(program: "Program") -> dict:
    """What a program runs, for reports (the keys `llmfab eval --artifact` reports where they apply)."""
    manifest, limits = program.manifest, program.limits
    recipe = manifest["recipe"]
    cache = f"KV{recipe['kv_bits']}" if recipe["kv_bits"] < 16 else "ACT32 KV cache"
    attention = (f"Λ attention ({limits.sinks} sinks + {limits.window} window), {cache}"
                 if limits.window is not None else f"dense attention (context {limits.max_context}), {cache}")
    return {
        "recipe": recipe["name"],
        "attention": attention,
        "board": manifest["hardware"]["board"].get("name"),
        "engine": manifest.get("engine_preset"),
        "prefill_chunk": limits.max_prefill_tokens,
        "hbm_bytes": sum(entry["used_bytes"] for entry in manifest["hbm"]["pcs"]),
    }
