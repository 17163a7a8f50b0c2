"""Programs for the cycle model: a compiled program folder, or a shape-only compile in memory.

`TimedProgram` is what the cycle model needs from a program: the instruction stream, the entry
of each routine, the model and recipe it runs, the hardware it was built for and its run-time
limits. `program_from_folder` reads `llmfab compile` output; `program_from_model` compiles a
model shape (quant/model_shapes.py) with a recipe preset for a board and engine without weights
(the scheduler's shape-only mode), caching the result per process.

A Λ recipe compiles to a Λ program (the scheduler's ring of S + W slots, RING KV
transfers, Λ visibility in ATTENTION), so its cost stops growing once the ring is full.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import Instruction, Registers, decode_program
from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.recipe import Recipe


@dataclass(frozen=True)
class TimedProgram:
    """An instruction stream with what the cycle model needs to run its routines."""

    name: str
    config: ModelConfig
    recipe: Recipe
    hardware: HardwareConfig
    instructions: tuple[Instruction, ...]
    entries: dict[str, int]
    chunk_tokens: int
    max_context: int | None  # None: unbounded (Λ)
    compile_seconds: float = 0.0
    hbm_bytes_by_kind: tuple[tuple[str, int], ...] = ()  # placed HBM bytes per kind (scheduler report)

    def hbm_bytes_without_kv(self) -> int:
        """HBM the program occupies apart from its KV cache regions."""
        return sum(v for k, v in self.hbm_bytes_by_kind if k != "kv")

    def registers(self, n_tokens: int, position: int) -> Registers:
        """The runtime registers of a run (Λ shape from the recipe, 0/0 for dense attention)."""
        return Registers(n_tokens=n_tokens, position=position, sinks=self.recipe.sinks or 0,
                         window=self.recipe.window or 0, chunk=self.chunk_tokens)

    def check_run(self, routine: str, n_tokens: int, position: int) -> None:
        """InputError unless the program can run `routine` on `n_tokens` tokens at `position`."""
        limit = self.chunk_tokens if routine == "prefill" else 1
        if not 1 <= n_tokens <= limit:
            raise InputError(f"{routine} of {n_tokens} tokens: the program's {routine} routine takes 1 to {limit}")
        if self.max_context is not None and position + n_tokens > self.max_context:
            raise InputError(
                f"context {position + n_tokens} exceeds this dense-attention program's {self.max_context} positions "
                "(its KV buffer holds no more); pass a shorter --context, a Λ recipe (e.g. accllm) or an engine "
                "with a larger kv_buffer_bytes")

    def retarget(self, hardware: HardwareConfig) -> TimedProgram:
        """The same instructions on `hardware`, which must give the scheduler the same buffers and
        ports (clock, PE array and lanes do not change the program, so a design sweep reuses it)."""
        if program_shape_key(hardware) != program_shape_key(self.hardware):
            raise InputError("retarget: the hardware differs in buffers or HBM ports; compile the model again for it")
        return dataclasses.replace(self, hardware=hardware)


def program_shape_key(hardware: HardwareConfig) -> tuple:
    """What the scheduler's output depends on: buffer sizes, HBM ports and their organisation."""
    e, hbm = hardware.engine, hardware.board.hbm
    return (e.weight_buffer_bytes, e.activation_buffer_bytes, e.kv_buffer_bytes, e.output_buffer_bytes,
            e.hbm_ports, e.axi_data_width_bits, hbm.pseudo_channels, hbm.pc_capacity_bytes)


def program_from_folder(folder: str | Path) -> TimedProgram:
    """Load and verify a program folder written by `llmfab compile`."""
    from llmfab.compiler.program import load_program

    program = load_program(folder)
    manifest = program.manifest
    instructions = tuple(decode_program(program.instructions_bytes()))
    entries = {name: int(r["entry"]) for name, r in manifest["routines"].items()}
    config = ModelConfig.from_dict(manifest["config"])
    recipe = Recipe.from_dict(manifest["recipe"])
    return TimedProgram(name=manifest.get("model_name") or config.name, config=config, recipe=recipe,
                        hardware=program.hardware, instructions=instructions, entries=entries,
                        chunk_tokens=program.limits.max_prefill_tokens, max_context=program.limits.max_context,
                        hbm_bytes_by_kind=_kinds(manifest.get("report", {})))


def program_from_model(config: ModelConfig, recipe: Recipe, hardware: HardwareConfig, name: str = "") -> TimedProgram:
    """Compile `config` with `recipe` for `hardware` without weights (cached per process)."""
    return dataclasses.replace(_cached(config, recipe, hardware), name=name or config.name, hardware=hardware)


def _cached(config: ModelConfig, recipe: Recipe, hardware: HardwareConfig) -> TimedProgram:
    key = (config.to_json(), _recipe_key(recipe), program_shape_key(hardware), hardware.board.name)
    if key not in _COMPILED:
        if len(_COMPILED) >= _CACHE_SIZE:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = _compile(config, recipe, hardware)
    return _COMPILED[key]


# Shape-only compiles of this process, keyed by what the program depends on (a Llama-2-7B compile
# takes ~15 s; design sweeps and reports reuse it for every clock and PE-array size).
_COMPILED: dict[tuple, TimedProgram] = {}
_CACHE_SIZE = 8


def _recipe_key(recipe: Recipe) -> str:
    import json

    return json.dumps(recipe.to_dict(), sort_keys=True)


def _compile(config: ModelConfig, recipe: Recipe, hardware: HardwareConfig) -> TimedProgram:
    """Shape-only compile (no weights)."""
    import time

    from llmfab.compiler.model_plan import ModelPlan
    from llmfab.compiler.scheduler import compile_model

    start = time.perf_counter()
    compiled = compile_model(ModelPlan.build(config, recipe), hardware, None)
    seconds = time.perf_counter() - start
    entries = {name: int(e["entry"]) for name, e in compiled.entries.items()}
    return TimedProgram(name=config.name, config=config, recipe=recipe, hardware=hardware,
                        instructions=tuple(compiled.instructions), entries=entries,
                        chunk_tokens=compiled.memory.chunk,
                        max_context=None if recipe.lambda_attention else compiled.memory.max_context,
                        compile_seconds=seconds, hbm_bytes_by_kind=_kinds(compiled.report))


def _kinds(report: dict) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in report.get("hbm_bytes_by_kind", {}).items()))
