"""Speed of the cycle model itself, and the Llama-2-7B figures it gives, written as JSON.

Usage: python benchmarks/cycle_model.py [--out results/cycle_model.json] [--engine u280-accllm]

Measures (wall-clock on this machine): the shape-only compile of Llama-2-7B with the accllm recipe,
one decode token timed cold (first call: every instruction's cost computed) and warm (fixed costs
cached), and a 32-point decode context sweep from 1k to 128k, on both datapaths (sim/op_timing.Datapath:
the RTL as built, and the target). Targets (issue 6): one decode token under 2 s, the sweep under a
minute. It also records the decode figures at 1k and 32k and the
calibration table of docs/performance.md (FlightLLM-like configuration, our engine, roofline).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from llmfab.boards.hardware import HardwareConfig
from llmfab.quant.model_shapes import model_shape
from llmfab.quant.recipe import Recipe
from llmfab.sim.calibration import PUBLISHED, accllm_u280, board_comparison, flightllm_u280
from llmfab.sim.cycle_program import program_from_model
from llmfab.sim.op_timing import Datapath
from llmfab.sim.performance import Simulator, decode_sweep, summary

SWEEP_POINTS = 32


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(engine: str) -> dict:
    hardware = HardwareConfig.from_preset(engine)
    program, compile_s = timed(lambda: program_from_model(model_shape("llama-2-7b"), Recipe.from_preset("accllm"),
                                                          hardware))
    result = {"model": "llama-2-7b", "recipe": "accllm", "engine": engine, "instructions": len(program.instructions),
              "compile_shape_only_s": compile_s}
    result["datapaths"] = {d.value: measure_datapath(program, d) for d in (Datapath.RTL, Datapath.TARGET)}
    return result


def measure_datapath(program, datapath: Datapath) -> dict:
    sim = Simulator(program, datapath=datapath)
    cold, cold_s = timed(lambda: sim.decode(1024))
    warm, warm_s = timed(lambda: sim.decode(2048))
    contexts = np.unique(np.geomspace(1024, 131072, SWEEP_POINTS).round().astype(int))
    sweep, sweep_s = timed(lambda: decode_sweep(program, contexts, Simulator(program, datapath=datapath)))
    headline = {c: summary(program, c, 512, sim) for c in (1024, 32768)}
    return {
        "timings_s": {"decode_token_cold": cold_s, "decode_token_warm": warm_s,
                      f"decode_sweep_{len(contexts)}_points": sweep_s},
        "targets_met": {"decode_token_under_2_s": cold_s < 2.0, "sweep_under_60_s": sweep_s < 60.0},
        "decode_cycles": {"1024": cold.cycles, "2048": warm.cycles},
        "sweep": sweep,
        "headline": {str(c): {k: s[k] for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "hbm_bytes_per_token",
                                              "hbm_utilization", "tokens_per_joule", "power_w",
                                              "hbm_roofline_tokens_per_s", "hbm_sustained_tokens_per_s",
                                              "compute_bound_tokens_per_s", "hbm_bytes_by_kind")}
                     for c, s in headline.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/cycle_model.json", help="JSON file to write")
    parser.add_argument("--engine", default="u280-accllm", help="engine preset (default u280-accllm)")
    args = parser.parse_args()
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, **measure(args.engine)}
    result["calibration"] = {"published": PUBLISHED, "flightllm_like": flightllm_u280(),
                             "ours": accllm_u280(engine=args.engine)}
    result["boards"] = board_comparison(engine=args.engine)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(result, tmp, indent=1)
    os.replace(tmp.name, out)
    print(json.dumps({"compile_shape_only_s": result["compile_shape_only_s"],
                      **{name: {"timings_s": d["timings_s"], "targets_met": d["targets_met"],
                                "decode_tokens_per_s": {c: h["decode_tokens_per_s"] for c, h in d["headline"].items()}}
                         for name, d in result["datapaths"].items()}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
