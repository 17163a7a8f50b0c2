"""`llmfab report`: a folder of PNG plots and a markdown summary of one model on one engine.

Contents: `summary.md` (headline figures, bounds, power, the plots), `summary.json` (the same
data), `roofline.png`, `layers.png`, `context.png` (decode tokens/s from 1k to 128k, Λ against
dense attention), `prefill.png` (against prompt length) and `design_sweep.png` (prefill PE array
size x clock on the board). The folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from llmfab.atomic import atomic_folder
from llmfab.boards.hardware import EngineDoesNotFitError, HardwareConfig, Mode
from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.recipe import DEFAULT_SINKS, DEFAULT_WINDOW, Recipe

from . import report_plots
from .cycle_program import TimedProgram, program_from_model
from .op_timing import DEFAULT_DATAPATH, Datapath
from .performance import Simulator, decode_sweep, summary

MARKER = "summary.md"


@dataclasses.dataclass(frozen=True)
class Sweeps:
    """The points of the report's sweeps."""

    contexts: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
    prompts: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    array_sizes: tuple[int, ...] = (32, 48, 64, 96, 128)
    clocks_mhz: tuple[float, ...] = (150.0, 200.0, 225.0, 250.0, 300.0)


def write_report(folder: str | Path, config: ModelConfig, recipe: Recipe, hardware: HardwareConfig,
                 context: int = 1024, prompt_tokens: int = 512, engine_name: str = "",
                 sweeps: Sweeps = Sweeps(), datapath: Datapath = DEFAULT_DATAPATH) -> dict:
    """Compute everything, write the folder, return the summary dict."""
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or (folder / MARKER).is_file())):
        raise InputError(f"output {folder} exists and is not a report folder; choose a new or empty folder with -o")
    program = program_from_model(config, recipe, hardware)
    sim = Simulator(program, datapath=datapath)
    notes = []
    if program.max_context is not None and context + 1 > program.max_context:
        notes.append(f"context lowered from {context} to {program.max_context - 1}: the dense program's KV buffer "
                     f"holds {program.max_context} positions")
        context = program.max_context - 1
    data = summary(program, context, prompt_tokens, sim)
    data["engine"] = engine_name
    data["notes"] = notes
    with atomic_folder(folder) as tmp:
        data["roofline_points"] = _roofline(tmp / "roofline.png", program, sim, context)
        report_plots.layer_breakdown(tmp / "layers.png", data["cycles_by_layer"], data["cycles_by_opcode"])
        data["context_sweep"] = _contexts(tmp / "context.png", config, recipe, hardware, sweeps.contexts, datapath)
        data["prefill_sweep"] = _prefills(tmp / "prefill.png", program, sim, sweeps.prompts)
        data["design_sweep"] = _design(tmp / "design_sweep.png", program, context, sweeps, datapath)
        (tmp / "summary.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        (tmp / MARKER).write_text(markdown(data), encoding="utf-8")
    return data


def _ops(timing) -> float:
    """Operations of a run: 2 per MAC, 1 per special-function element."""
    return sum(v * (1 if m is Mode.SPECIAL else 2) for m, v in timing.macs_by_mode.items())


def _roofline(path: Path, program: TimedProgram, sim: Simulator, context: int) -> list[dict]:
    hw = program.hardware
    from . import hbm_timing

    points = []
    for label, timing in ((f"decode step at context {context}", sim.decode(context)),
                          (f"prefill chunk of {program.chunk_tokens} tokens", sim.prefill_chunk(program.chunk_tokens, 0))):
        ops = _ops(timing)
        points.append({"label": label, "intensity": ops / max(timing.hbm_bytes, 1.0), "ops_per_s": ops / timing.seconds})
    roofs = {"hbm_peak_bytes_per_s": hw.peak_hbm_bytes_per_s,
             "hbm_sustained_bytes_per_s": hbm_timing.sustained_bytes_per_cycle(hw, sim.hbm) * hw.clock_hz,
             "compute_ops_per_s": {m.value: hw.peak_ops_per_s(m) for m in (Mode.DECODE, Mode.PREFILL, Mode.ATTENTION)}}
    report_plots.roofline(path, roofs, points)
    return points


def _contexts(path: Path, config: ModelConfig, recipe: Recipe, hardware: HardwareConfig, contexts,
              datapath: Datapath) -> dict:
    lam = recipe if recipe.lambda_attention else dataclasses.replace(recipe, sinks=DEFAULT_SINKS, window=DEFAULT_WINDOW)
    dense = dataclasses.replace(recipe, sinks=None, window=None)
    curves = {}
    lam_rows = None
    for label, r in ((f"Λ attention (sinks {lam.sinks}, window {lam.window})", lam), ("dense attention", dense)):
        program = program_from_model(config, r, hardware)
        rows = decode_sweep(program, contexts, Simulator(program, datapath=datapath), beyond_buffer=True)
        curves[label] = rows
        if lam_rows is None:
            lam_rows = [{"context": row["context"],
                         "tokens_per_s": hardware.peak_hbm_bytes_per_s / row["hbm_bytes_per_token"]} for row in rows]
    report_plots.context_sweep(path, curves, lam_rows)
    return curves


def _prefills(path: Path, program: TimedProgram, sim: Simulator, prompts) -> list[dict]:
    rows = []
    for n in prompts:
        if program.max_context is not None and n > program.max_context:
            continue
        cycles, nbytes, timed = sim.prefill(n)
        seconds = cycles / program.hardware.clock_hz
        rows.append({"prompt_tokens": n, "prefill_seconds": seconds, "prefill_tokens_per_s": n / seconds,
                     "hbm_bytes": nbytes, "chunks_timed": timed})
    report_plots.prefill_sweep(path, rows)
    return rows


def _design(path: Path, program: TimedProgram, context: int, sweeps: Sweeps, datapath: Datapath) -> dict:
    base = program.hardware
    sizes, clocks = list(sweeps.array_sizes), list(sweeps.clocks_mhz)
    decode = np.zeros((len(sizes), len(clocks)))
    prefill = np.zeros_like(decode)
    fits = np.zeros(decode.shape, dtype=bool)
    for i, size in enumerate(sizes):
        for j, clock in enumerate(clocks):
            hw = HardwareConfig(board=base.board, engine=base.engine.replace(prefill_rows=size, prefill_cols=size,
                                                                             clock_mhz=clock))
            try:
                hw.check_fits()
                fits[i, j] = True
            except EngineDoesNotFitError:
                fits[i, j] = False
            sim = Simulator(program.retarget(hw), datapath=datapath)
            decode[i, j] = 1 / sim.decode(context).seconds
            chunk = sim.prefill_chunk(program.chunk_tokens, 0)
            prefill[i, j] = program.chunk_tokens / chunk.seconds
    report_plots.design_sweep(path, sizes, clocks, decode, prefill, fits)
    return {"array_sizes": sizes, "clocks_mhz": clocks, "decode_tokens_per_s": decode.tolist(),
            "prefill_chunk_tokens_per_s": prefill.tolist(), "fits": fits.tolist()}


def _fmt(value, spec=",.1f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(d: dict) -> str:
    """The summary page."""
    attention = "Λ" if d["lambda_attention"] else "dense"
    lines = [
        f"# {d['model']} with {d['recipe']} on {d['board']}" + (f" ({d['engine']})" if d.get("engine") else ""),
        "",
        f"Cycle-model figures ({attention} attention, {d['clock_mhz']:g} MHz). Formulas, constants and "
        "assumptions: docs/performance.md in the llmfab repository.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| decode at context {d['context']:,} | {_fmt(d['decode_tokens_per_s'])} tokens/s ({d['decode_seconds'] * 1e3:,.2f} ms) |",
        f"| prefill of {d['prompt_tokens']:,} tokens | {d['prefill_seconds']:,.3f} s, {_fmt(d['prefill_tokens_per_s'])} tokens/s |",
        f"| HBM bytes per decoded token | {d['hbm_bytes_per_token'] / 1e6:,.1f} MB |",
        f"| HBM utilisation (of peak) | {d['hbm_utilization']:.1%} |",
        f"| HBM roofline / sustained HBM bound | {_fmt(d['hbm_roofline_tokens_per_s'])} / "
        f"{_fmt(d['hbm_sustained_tokens_per_s'])} tokens/s |",
        f"| compute bound | {_fmt(d['compute_bound_tokens_per_s'])} tokens/s |",
        f"| power (model) | {d['power_w']:.1f} W |",
        f"| energy | {d['tokens_per_joule']:.2f} tokens/J |",
        "",
    ]
    if d["notes"] or d["warnings"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in d["notes"] + d["warnings"]] + [""]
    lines += ["HBM bytes per token by kind: " + ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in
                                                           sorted(d["hbm_bytes_by_kind"].items())), ""]
    for title, png in (("Roofline", "roofline.png"), ("Time per layer and per instruction class", "layers.png"),
                       ("Decode against context, Λ and dense", "context.png"), ("Prefill", "prefill.png"),
                       ("Design sweep", "design_sweep.png")):
        lines += [f"## {title}", "", f"![{title}]({png})", ""]
    lines += ["## Context sweep", "", "| context | " + " | ".join(d["context_sweep"]) + " |",
              "| --- |" + " --- |" * len(d["context_sweep"])]
    curves = list(d["context_sweep"].values())
    for k, row in enumerate(curves[0]):
        cells = []
        for rows in curves:
            r = rows[k]
            flag = "" if r["fits_hbm"] and r["fits_buffer"] else (" (KV exceeds HBM)" if not r["fits_hbm"]
                                                                  else " (past KV buffer)")
            cells.append(f"{r['decode_tokens_per_s']:,.1f}{flag}")
        lines.append(f"| {row['context']:,} | " + " | ".join(cells) + " |")
    lines += ["", "## Prefill", "", "| prompt tokens | seconds | tokens/s |", "| --- | --- | --- |"]
    lines += [f"| {r['prompt_tokens']:,} | {r['prefill_seconds']:,.3f} | {r['prefill_tokens_per_s']:,.1f} |"
              for r in d["prefill_sweep"]]
    return "\n".join(lines) + "\n"
