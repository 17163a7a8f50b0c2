"""RTL resources (Yosys synth_xilinx -family xcup) and simulator speed, as JSON.

Usage: python benchmarks/rtl.py [--engine u280-default] [--check-ports 8] [--full]
                                [--skip-synth] [--out results/rtl.json]

Resources: the generated kernel (XRT top + shell) at the preset's AXI width and burst length is
synthesized with one and with two HBM ports; their difference is the cost of a port (AXI4
master + copy engine), and base + ports x per-port extrapolates to the preset's port count. A
kernel with --check-ports ports is synthesized too, to measure the extrapolation's error, and
with --full the preset's whole kernel (32 ports: about 1 GB and 15 minutes with Yosys 0.23). The preset's figures are compared with the board's capacity and with its
kernel-available share (capacity minus the platform shell).

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


def resources(preset: str, check_ports: int, full: bool, timeout: float) -> dict:
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.synth import SynthesisFailed

    config = HardwareConfig.from_preset(preset)
    engine, board = config.engine, config.board
    one, two = _synth_ports(engine, 1, timeout), _synth_ports(engine, 2, timeout)
    r1, r2 = one.resources.as_dict(), two.resources.as_dict()
    per_port = {k: r2[k] - r1[k] for k in r1}
    base = {k: r1[k] - per_port[k] for k in r1}

    def extrapolate(ports: int) -> dict:
        return {k: base[k] + ports * per_port[k] for k in r1}

    report = {
        "preset": preset, "board": board.name, "hbm_ports": engine.hbm_ports,
        "axi_data_width_bits": engine.axi_data_width_bits, "axi_burst_len": engine.axi_burst_len,
        "scaling": "resources = base + ports x per_port, from the 1- and 2-port kernels",
        "synth_1_port": one.to_dict(), "synth_2_ports": two.to_dict(),
        "per_port": per_port, "base": base, "extrapolated": extrapolate(engine.hbm_ports),
    }
    measured = None
    for ports, key in ((check_ports, "synth_check"), *(((engine.hbm_ports, "synth_full"),) if full else ())):
        try:
            result = _synth_ports(engine, ports, timeout)
        except SynthesisFailed as err:
            report[key] = {"ports": ports, "error": str(err).splitlines()[0]}
            continue
        got, guess = result.resources.as_dict(), extrapolate(ports)
        report[key] = {"ports": ports, **result.to_dict(),
                       "extrapolation_error": {k: (guess[k] - got[k]) / got[k] if got[k] else None for k in got}}
        if ports == engine.hbm_ports:
            measured = got
    figures = measured or report["extrapolated"]
    report["preset_figures"] = "synthesized" if measured else "extrapolated"
    capacity, kernel_capacity = board.fabric.resources.as_dict(), board.kernel_resources.as_dict()
    report["board_capacity"], report["kernel_capacity"] = capacity, kernel_capacity
    report["utilization_of_board"] = {k: figures[k] / capacity[k] for k in figures}
    report["utilization_of_kernel_capacity"] = {k: figures[k] / kernel_capacity[k] for k in figures}
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
    parser.add_argument("--check-ports", type=int, default=8,
                        help="also synthesize a kernel with this many ports to check the extrapolation (default 8)")
    parser.add_argument("--full", action="store_true",
                        help="also synthesize the preset's full port count (32 ports of the U280 preset: about "
                        "1 GB and 15 minutes with Yosys 0.23)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per Yosys run")
    parser.add_argument("--skip-synth", action="store_true", help="only measure the simulators")
    parser.add_argument("--out", default="results/rtl.json", help="JSON file to write")
    args = parser.parse_args()
    from llmfab.rtl.synth import missing_yosys

    report = {"engine": args.engine}
    report["simulators"] = simulator_speed(args.engine)
    print(json.dumps(report["simulators"], indent=1), file=sys.stderr)
    if not args.skip_synth:
        reason = missing_yosys()
        report["resources"] = {"skipped": reason} if reason else resources(args.engine, args.check_ports, args.full,
                                                                                     args.timeout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
