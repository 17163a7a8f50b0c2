"""Headline figures of a program on its hardware: decode and prefill rates, HBM traffic, bounds,
utilisation and energy, from the cycle model (sim/cycle_model.py) and the power model.

Definitions (docs/performance.md):
- decode at context N: one decode step with N tokens already in the cache (position N, T = 1);
- prefill of P tokens: the prefill routine over chunks of C tokens at positions 0, C, 2C, ...;
  with more than `PREFILL_SAMPLES` chunks, chunks at evenly spaced positions are timed and the
  rest interpolated linearly (chunk time is linear in position for dense attention, constant for
  Λ once the ring is full);
- bounds: the HBM roofline (bytes / peak board bandwidth), the sustained HBM bound (bytes at the
  efficiency hbm_timing measures) and the compute bound (work / lanes per mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.boards.hardware import Mode

from . import hbm_timing
from .hbm_timing import DEFAULT_HBM_TIMING, HbmTiming
from .cycle_model import RoutineTimer, RoutineTiming
from .cycle_program import TimedProgram
from .op_timing import DEFAULT_DATAPATH, Datapath
from .power_model import Activity, PowerEstimate, estimate_power

PREFILL_SAMPLES = 12


class Simulator:
    """Times the routines of one program; reuse it for sweeps (fixed costs are cached)."""

    def __init__(self, program: TimedProgram, hbm: HbmTiming = DEFAULT_HBM_TIMING,
                 datapath: Datapath = DEFAULT_DATAPATH):
        self.program = program
        self.hbm = hbm
        self.datapath = datapath
        self.timer = RoutineTimer(program.instructions, program.hardware, program.config.num_layers, hbm, datapath)

    def decode(self, context: int, check: bool = True) -> RoutineTiming:
        """One decode step with `context` tokens already cached."""
        if check:
            self.program.check_run("decode", 1, context)
        return self.timer.time(self.program.entries["decode"], self.program.registers(1, context))

    def prefill_chunk(self, n_tokens: int, position: int) -> RoutineTiming:
        self.program.check_run("prefill", n_tokens, position)
        return self.timer.time(self.program.entries["prefill"], self.program.registers(n_tokens, position))

    def prefill(self, prompt_tokens: int) -> tuple[float, float, int]:
        """(cycles, HBM bytes, chunks timed) of a whole prompt of `prompt_tokens` tokens."""
        if prompt_tokens < 1:
            raise ValueError("a prompt has at least one token")
        chunk = self.program.chunk_tokens
        starts = np.arange(0, prompt_tokens, chunk)
        sizes = np.minimum(chunk, prompt_tokens - starts)
        full = starts[sizes == chunk]
        picks = full if len(full) <= PREFILL_SAMPLES else full[np.unique(np.linspace(0, len(full) - 1,
                                                                                    PREFILL_SAMPLES).round().astype(int))]
        timed = {int(p): self.prefill_chunk(chunk, int(p)) for p in picks}
        cycles = bytes_ = 0.0
        if len(full):
            xs = np.array(sorted(timed))
            cycles += float(np.interp(full, xs, [timed[x].cycles for x in xs]).sum())
            bytes_ += float(np.interp(full, xs, [timed[x].hbm_bytes for x in xs]).sum())
        if sizes[-1] != chunk:
            last = self.prefill_chunk(int(sizes[-1]), int(starts[-1]))
            cycles += last.cycles
            bytes_ += last.hbm_bytes
            timed[-1] = last
        return cycles, bytes_, len(timed)


@dataclass(frozen=True)
class Bounds:
    """Lower bounds on a routine's cycles."""

    hbm_peak_cycles: float  # bytes at the board's theoretical bandwidth
    hbm_sustained_cycles: float  # bytes at the best rate hbm_timing allows (full bursts, all ports)
    compute_cycles: float  # work of the busiest datapath at its peak rate


def bounds(timing: RoutineTiming, program: TimedProgram, hbm: HbmTiming = DEFAULT_HBM_TIMING) -> Bounds:
    hw = program.hardware
    compute = max((timing.macs_by_mode.get(m, 0.0) / hw.macs_per_cycle(m) for m in Mode), default=0.0)
    return Bounds(hbm_peak_cycles=timing.hbm_bytes / hw.peak_hbm_bytes_per_cycle,
                  hbm_sustained_cycles=timing.hbm_bytes / hbm_timing.sustained_bytes_per_cycle(hw, hbm),
                  compute_cycles=compute)


def power_of(timing: RoutineTiming, program: TimedProgram) -> PowerEstimate:
    return estimate_power(program.hardware, Activity(cycles=timing.cycles, hbm_bytes=timing.hbm_bytes,
                                                     busy_cycles=dict(timing.busy_by_mode)))


def summary(program: TimedProgram, context: int, prompt_tokens: int, simulator: Simulator | None = None) -> dict:
    """Every figure `llmfab simulate` prints, as a JSON-ready dict."""
    sim = simulator or Simulator(program)
    hw = program.hardware
    decode = sim.decode(context)
    seconds = decode.seconds
    b = bounds(decode, program, sim.hbm)
    power = power_of(decode, program)
    prefill_cycles, prefill_bytes, chunks_timed = sim.prefill(prompt_tokens)
    prefill_seconds = prefill_cycles / hw.clock_hz
    utilization = {m.value: decode.macs_by_mode.get(m, 0.0) / (decode.cycles * hw.macs_per_cycle(m))
                   for m in Mode if decode.cycles}
    return {
        "model": program.name,
        "recipe": program.recipe.name,
        "board": hw.board.name,
        "clock_mhz": hw.engine.clock_mhz,
        "context": context,
        "prompt_tokens": prompt_tokens,
        "lambda_attention": program.recipe.lambda_attention,
        "datapath": sim.datapath.value,
        "decode_cycles": decode.cycles,
        "decode_seconds": seconds,
        "decode_tokens_per_s": 1.0 / seconds,
        "prefill_seconds": prefill_seconds,
        "prefill_tokens_per_s": prompt_tokens / prefill_seconds,
        "prefill_chunk_tokens": program.chunk_tokens,
        "prefill_chunks_timed": chunks_timed,
        "prefill_hbm_bytes": prefill_bytes,
        "hbm_bytes_per_token": decode.hbm_bytes,
        "hbm_bytes_by_kind": decode.hbm_bytes_by_kind,
        "hbm_utilization": decode.hbm_bytes / (decode.cycles * hw.peak_hbm_bytes_per_cycle),
        "compute_utilization": utilization,
        "hbm_roofline_tokens_per_s": hw.clock_hz / b.hbm_peak_cycles if b.hbm_peak_cycles else None,
        "hbm_sustained_tokens_per_s": hw.clock_hz / b.hbm_sustained_cycles if b.hbm_sustained_cycles else None,
        "compute_bound_tokens_per_s": hw.clock_hz / b.compute_cycles if b.compute_cycles else None,
        "power_w": power.total_w,
        "power": power.to_dict(),
        "tokens_per_joule": power.tokens_per_joule(1.0),
        "cycles_by_layer": decode.segment_cycles,
        "cycles_by_opcode": decode.cycles_by_opcode,
        "busy_cycles_by_unit": decode.busy_by_unit,
        "instructions_by_opcode": decode.count_by_opcode,
        "warnings": _fit_warning(hw) + list(decode.overflows[:5])
        + ([f"... {len(decode.overflows) - 5} more"] if len(decode.overflows) > 5 else []),
    }


def _fit_warning(hardware) -> list[str]:
    """The fit check's complaint, if the engine is too big for its board."""
    from llmfab.boards.hardware import EngineDoesNotFitError

    try:
        hardware.check_fits()
    except EngineDoesNotFitError as err:
        return [str(err)]
    return []


def decode_sweep(program: TimedProgram, contexts, simulator: Simulator | None = None,
                 beyond_buffer: bool = False) -> list[dict]:
    """Decode rate and traffic at each context. `beyond_buffer` times dense programs past their
    KV-buffer capacity too (as if the cache streamed through it), for extrapolated curves."""
    sim = simulator or Simulator(program)
    rows = []
    for context in contexts:
        timing = sim.decode(int(context), check=not beyond_buffer)
        kv_total = _kv_bytes(program, int(context))
        rows.append({"context": int(context), "decode_tokens_per_s": 1.0 / timing.seconds,
                     "hbm_bytes_per_token": timing.hbm_bytes, "cycles": timing.cycles,
                     "fits_buffer": not timing.overflows,
                     "fits_hbm": program.hbm_bytes_without_kv() + kv_total <= program.hardware.board.hbm.total_capacity_bytes})
    return rows


def _kv_bytes(program: TimedProgram, context: int) -> float:
    from llmfab.quant.recipe import kv_bytes_per_token

    held = context if not program.recipe.lambda_attention else min(context, program.recipe.sinks + program.recipe.window)
    return kv_bytes_per_token(program.config, program.recipe) * held
