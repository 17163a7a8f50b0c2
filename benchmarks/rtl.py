"""RTL resources (Yosys synth_xilinx -family xcup) and simulator speed, as JSON.

Usage: python benchmarks/rtl.py [--engine u280-default] [--full-timeout 3600]
                                [--out results/rtl.json]

Resources: the generated kernel (XRT top + shell) for the engine preset is synthesized with one
and with two HBM ports; their difference is the cost of a port (AXI4 master + copy engine), and
base + ports x per-port extrapolates to the preset. The full preset is then synthesized too
(unless it exceeds --full-timeout), which checks the extrapolation. Both are compared with the
board's capacity and its kernel-available share (capacity minus the platform shell).

Simulators: the kernel shell's cocotb test (two ports at the preset's AXI width, XRT driving it
through s_axi_control, AXI memory models on the masters) runs on Icarus and Verilator; cycles
per second = simulated cycles / wall time of the test, Python models included — the rate a
cocotb test of the engine can expect. Build time is reported apart (a cached build shows 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

CLOCK_NS = 4  # period of the cocotb clock in tests/rtl/cocotb_kernel_shell.py
SIM_PORTS = 2


def _synth_ports(engine, ports: int, timeout: float | None):
    from llmfab.compiler.placement import KERNEL_NAME
    from llmfab.rtl.emit import kernel_sources
    from llmfab.rtl.kernel_shell import KernelShell
    from llmfab.rtl.synth import synthesize

    sources = kernel_sources(KernelShell(ports, engine.axi_data_width_bits, engine.axi_burst_len), KERNEL_NAME)
    return synthesize(sources.verilog, KERNEL_NAME, timeout_s=timeout)


def resources(preset: str, full_timeout: float) -> dict:
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.synth import SynthesisFailed

    config = HardwareConfig.from_preset(preset)
    engine, board = config.engine, config.board
    one, two = _synth_ports(engine, 1, None), _synth_ports(engine, 2, None)
    r1, r2 = one.resources.as_dict(), two.resources.as_dict()
    per_port = {k: r2[k] - r1[k] for k in r1}
    base = {k: r1[k] - per_port[k] for k in r1}
    extrapolated = {k: base[k] + engine.hbm_ports * per_port[k] for k in r1}
    capacity = board.fabric.resources.as_dict()
    kernel_capacity = board.kernel_resources.as_dict()
    report = {
        "preset": preset, "board": board.name, "hbm_ports": engine.hbm_ports,
        "axi_data_width_bits": engine.axi_data_width_bits, "axi_burst_len": engine.axi_burst_len,
        "synth_1_port": one.to_dict(), "synth_2_ports": two.to_dict(),
        "per_port": per_port, "base": base, "extrapolated": extrapolated,
        "board_capacity": capacity, "kernel_capacity": kernel_capacity,
    }
    try:
        full = _synth_ports(engine, engine.hbm_ports, full_timeout)
        report["synth_full"] = full.to_dict()
        measured = full.resources.as_dict()
        report["extrapolation_error"] = {k: (extrapolated[k] - measured[k]) / measured[k] if measured[k] else None
                                         for k in measured}
    except SynthesisFailed as err:
        report["synth_full"] = {"error": str(err)}
        measured = extrapolated
    report["utilization_of_board"] = {k: measured[k] / capacity[k] for k in measured}
    report["utilization_of_kernel_capacity"] = {k: measured[k] / kernel_capacity[k] for k in measured}
    return report


def simulator_speed(preset: str) -> dict:
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.compiler.placement import KERNEL_NAME
    from llmfab.rtl.emit import kernel_sources
    from llmfab.rtl.kernel_shell import KernelShell
    from llmfab.rtl.sim_runner import SIMULATORS, missing_tool, simulate

    engine = HardwareConfig.from_preset(preset).engine
    sources = kernel_sources(KernelShell(SIM_PORTS, engine.axi_data_width_bits, engine.axi_burst_len), KERNEL_NAME)
    out = {"design": f"kernel shell, {SIM_PORTS} ports x {engine.axi_data_width_bits} bits", "clock_ns": CLOCK_NS}
    for sim in SIMULATORS:
        reason = missing_tool(sim)
        if reason is not None:
            out[sim] = {"skipped": reason}
            continue
        start = time.perf_counter()
        result = simulate(sources.verilog, toplevel=KERNEL_NAME, test_module="llmfab.tests.rtl.cocotb_kernel_shell",
                          simulator=sim, extra_env={"KERNEL_PORTS": str(SIM_PORTS),
                                                    "KERNEL_MAX_BURST": str(engine.axi_burst_len)})
        tests = {t.name: {"sim_cycles": round(t.sim_time_ns / CLOCK_NS), "wall_s": t.real_time_s,
                          "cycles_per_s": round(t.sim_time_ns / CLOCK_NS / t.real_time_s) if t.real_time_s else None}
                 for t in result.tests}
        total_cycles = sum(v["sim_cycles"] for v in tests.values())
        total_wall = sum(t.real_time_s for t in result.tests)
        out[sim] = {"tests": tests, "cycles_per_s": round(total_cycles / total_wall), "build_s": round(result.build_seconds, 1),
                    "cached_build": result.cached_build, "total_s": round(time.perf_counter() - start, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="u280-default", help="engine preset to synthesize")
    parser.add_argument("--full-timeout", type=float, default=3600.0,
                        help="seconds allowed for synthesizing the full preset (then only the extrapolation is kept)")
    parser.add_argument("--skip-synth", action="store_true", help="only measure the simulators")
    parser.add_argument("--out", default="results/rtl.json", help="JSON file to write")
    args = parser.parse_args()
    from llmfab.rtl.synth import missing_yosys

    report = {"engine": args.engine}
    report["simulators"] = simulator_speed(args.engine)
    print(json.dumps(report["simulators"], indent=1), file=sys.stderr)
    if not args.skip_synth:
        reason = missing_yosys()
        report["resources"] = {"skipped": reason} if reason else resources(args.engine, args.full_timeout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
