"""The ``reference`` backend: the integer reference model (sim/integer_model.py) behind the Backend
calls, built from the compressed-model artifact the program was compiled from.

It executes no instructions; it computes what the program must compute, so running the same token
stream through ``emu`` and ``reference`` and comparing the logits bit for bit checks the compiler and
the emulator together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llmfab.compiler.program import Program
    from llmfab.host.backend import BackendOptions


@dataclass(frozen=True)
class ReferenceRunStats:
    """What one routine run of the reference model did."""

    routine: str
    n_tokens: int
    position: int
    seconds: float


def check_same_model(program: "Program", artifact) -> None:
    """ProgramError unless ``artifact`` holds the model config and recipe the program was built from
    (compared as parsed objects, so fields added to the recipe since either was written take their
    defaults on both sides)."""
    from llmfab.compiler.program import ProgramError
    from llmfab.quant.config import ModelConfig
    from llmfab.quant.recipe import Recipe

    for key, kind in (("config", ModelConfig), ("recipe", Recipe)):
        try:
            built_from = kind.from_dict(program.manifest[key])
        except (KeyError, TypeError, ValueError) as err:
            raise ProgramError(f"{program.folder}/manifest.json has a malformed model {key} ({err})") from None
        if built_from != getattr(artifact, key):
            raise ProgramError(
                f"artifact {artifact.folder} has another model {key} than program {program.folder} was "
                "compiled from; pass the artifact given to `llmfab compile` (--artifact DIR)"
            )


class ReferenceBackend:
    """IntegerModel.forward on the written tokens, its cache standing in for device memory."""

    name = "reference"

    def __init__(self, program: "Program", options: "BackendOptions"):
        from llmfab.compiler.program import ProgramError
        from llmfab.quant.artifact import load_artifact
        from llmfab.sim.integer_weights import integer_model_from_artifact

        if options.artifact is None:
            raise ProgramError(f"the reference backend needs the artifact {program.folder} was compiled from; "
                               "pass it with --artifact DIR")
        self.program = program
        artifact = load_artifact(options.artifact)
        check_same_model(program, artifact)
        self.model = integer_model_from_artifact(artifact)
        self.cache = self.model.new_cache()
        self.tokens = np.zeros(0, dtype=np.int64)
        self.logits = np.zeros((0, program.limits.vocab_size), dtype=np.int64)

    def reset(self) -> None:
        self.cache = self.model.new_cache()

    def write_tokens(self, token_ids: np.ndarray) -> None:
        self.tokens = np.array(token_ids, dtype=np.int64).reshape(-1)

    def start(self, routine: str, n_tokens: int, position: int) -> ReferenceRunStats:
        from llmfab.compiler.program import ProgramError

        if position != self.cache.position:
            raise ProgramError(f"{routine} at stream position {position}, but the reference model's cache "
                               f"holds {self.cache.position} positions; it processes a stream in order")
        if n_tokens > len(self.tokens):
            raise ProgramError(f"{routine} of {n_tokens} tokens, but only {len(self.tokens)} were written")
        start = time.perf_counter()
        self.logits = self.model.forward(self.tokens[:n_tokens], self.cache)
        return ReferenceRunStats(routine, n_tokens, position, time.perf_counter() - start)

    def read_logits(self, n_tokens: int) -> np.ndarray:
        return self.logits[:n_tokens]
