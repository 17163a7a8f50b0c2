"""RTL resources (Yosys synth_xilinx -family xcup) and simulator speed, as JSON.

Usage: python benchmarks/rtl.py [--engine u280-default] [--check-ports 8] [--full]
                                [--skip-synth] [--engine-parts PRESET [--lane-factors 1,2,4]]
                                [--out results/rtl.json]

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

Engine (--engine-parts PRESET): the engine too large for one Yosys run is synthesized part by
part (`engine_part_components`, parts that share nothing, times their counts), its buffers
counted by capacity (`buffer_estimate`); with --lane-factors the lane-scaled sequencers are
synthesized at multiples of the preset's lanes and fitted per factor (`lane_scaling`).
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
    report["board_capacity"], report["kernel_capacity"] = board.fabric.resources.as_dict(), board.kernel_resources.as_dict()
    report.update(utilization(board, figures))
    return report


def utilization(board, figures: dict) -> dict:
    """`figures` (resource -> count) as shares of the board's fabric and of its kernel-available part."""
    capacity, kernel_capacity = board.fabric.resources.as_dict(), board.kernel_resources.as_dict()
    return {"utilization_of_board": {k: figures[k] / capacity[k] for k in figures},
            "utilization_of_kernel_capacity": {k: figures[k] / kernel_capacity[k] for k in figures}}


def engine_part_components(preset: str) -> tuple[dict, dict]:
    """The engine of `preset` cut into parts Yosys can take one at a time, and how many of each
    the engine has: the control slave, the issue unit, the LOAD and STORE units, the COMPUTE
    dispatch (without sequencers), the DMA of port 0 (with the instruction fetch) and of one
    other port, and each COMPUTE sequencer with its datapath units. Nothing is shared between
    parts, so their counts times their resources sum to the engine without its buffers
    (`buffer_estimate`)."""
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.control import ControlSlave
    from llmfab.rtl.engine.compute_unit import ComputeUnit
    from llmfab.rtl.engine.dma import PortDma
    from llmfab.rtl.engine.engine import default_sequencers, engine_register_map
    from llmfab.rtl.engine.geometry import EngineGeometry
    from llmfab.rtl.engine.issue import IssueUnit
    from llmfab.rtl.engine.memory_unit import MemoryUnit

    g = EngineGeometry.from_config(HardwareConfig.from_preset(preset))
    parts = {"control": ControlSlave(engine_register_map(g.hbm_ports)), "issue": IssueUnit(g.axi_data_width // 8),
             "load_unit": MemoryUnit("load", g), "store_unit": MemoryUnit("store", g),
             "compute_dispatch": ComputeUnit(g, {}),
             "port_dma_fetch": PortDma(g.buffers, g.axi_data_width, g.axi_burst_len, fetch=True)}
    counts = dict.fromkeys(parts, 1)
    if g.hbm_ports > 1:
        parts["port_dma"] = PortDma(g.buffers, g.axi_data_width, g.axi_burst_len, fetch=False)
        counts["port_dma"] = g.hbm_ports - 1
    for opcode, sequencer in default_sequencers(g).items():
        name = ("elementwise_" if opcode.name in ("ADD", "SILU_MUL") else "") + opcode.name.lower()
        parts[name], counts[name] = sequencer, 1
    return parts, counts


def buffer_estimate(preset: str) -> dict:
    """Block RAM the four buffers need if mapped as the design intends, one copy per read port
    (not synthesized: EngineBuffers gives every buffer 1 + P write ports, which no FPGA block RAM
    has, and Yosys turns such memories into flip-flops)."""
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.engine.geometry import EngineGeometry

    g = EngineGeometry.from_config(HardwareConfig.from_preset(preset))
    reads, writes = 2 + g.hbm_ports + 1, 1 + g.hbm_ports
    bits = {buf.name: words * g.word_bytes * 8 for buf, words in g.buffers.words.items()}
    bram36 = sum(reads * -(-b // (36 * 1024)) for b in bits.values())
    return {"read_ports": reads, "write_ports": writes, "bits": bits, "bram36_if_replicated_per_read_port": bram36,
            "flip_flops_as_written": sum(bits.values()),
            "note": "estimate, not synthesized: the buffers need banking (or fewer write ports) to map to BRAM/URAM"}


def engine_resources(preset: str, timeout: float) -> dict:
    """Yosys resources of every engine part (`engine_part_components`), their sum times their
    counts, and the buffers' estimate."""
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.emit import component_verilog
    from llmfab.rtl.synth import SynthesisFailed, synthesize

    board = HardwareConfig.from_preset(preset).board
    components, counts = engine_part_components(preset)
    parts, total, failed = {}, None, []
    for name, component in components.items():
        verilog = component_verilog(component, f"llmfab_{name}")
        try:
            result = synthesize(verilog, f"llmfab_{name}", timeout_s=timeout)
        except SynthesisFailed as err:
            parts[name] = {"count": counts[name], "error": str(err).splitlines()[0]}
            failed.append(name)
            continue
        parts[name] = {"count": counts[name], **result.to_dict()}
        got = {k: counts[name] * v for k, v in result.resources.as_dict().items()}
        total = got if total is None else {k: total[k] + got[k] for k in got}
        print(f"{name} x{counts[name]}: {result.resources.as_dict()} in {result.seconds:.0f} s", file=sys.stderr,
              flush=True)
    report = {"preset": preset, "parts": parts, "failed": failed, "sum_without_buffers": total,
              "buffers": buffer_estimate(preset)}
    if total is not None and not failed:
        report.update(utilization(board, total))
    return report


SCALED_PARTS = ("gemm", "attention", "rmsnorm")  # the decode/prefill lanes, the attention lanes, an SFU row unit


def lane_scaling(preset: str, factors, timeout: float) -> dict:
    """Resources of the lane-scaled sequencers (SCALED_PARTS) with `preset`'s decode lanes, prefill
    array side, attention lanes and SFU lanes multiplied by each factor, and each resource's
    least-squares growth per unit of the factor (`per_factor`): how the engine grows toward a
    U280-sized datapath that Yosys cannot take whole."""
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.emit import component_verilog
    from llmfab.rtl.engine.engine import default_sequencers
    from llmfab.rtl.engine.geometry import EngineGeometry
    from llmfab.rtl.synth import SynthesisFailed, synthesize

    base = HardwareConfig.from_preset(preset)
    e = base.engine
    rows = []
    for f in factors:
        engine = e.replace(decode_lanes=e.decode_lanes * f, prefill_rows=e.prefill_rows * f,
                           prefill_cols=e.prefill_cols * f, attention_lanes=e.attention_lanes * f,
                           sfu_lanes=e.sfu_lanes * f)
        g = EngineGeometry.from_config(HardwareConfig(board=base.board, engine=engine))
        seqs = {op.name.lower(): seq for op, seq in default_sequencers(g).items()}
        row = {"factor": f, "decode_lanes": g.decode_lanes, "prefill": [g.prefill_rows, g.prefill_cols],
               "attention_lanes": g.attention_lanes, "sfu_lanes": g.sfu_lanes, "word_bytes": g.word_bytes}
        for name in SCALED_PARTS:
            try:
                result = synthesize(component_verilog(seqs[name], f"llmfab_{name}"), f"llmfab_{name}", timeout_s=timeout)
                row[name] = {**result.resources.as_dict(), "seconds": round(result.seconds, 1)}
            except SynthesisFailed as err:
                row[name] = {"error": str(err).splitlines()[0]}
            print(f"x{f} {name}: {row[name]}", file=sys.stderr, flush=True)
        rows.append(row)
    return {"preset": preset, "rows": rows, "per_factor": lane_fit(rows)}


def lane_fit(rows: list[dict]) -> dict:
    """Least-squares slope of each resource of each scaled part over the lane factor."""
    import numpy as np

    per_factor = {}
    for name in SCALED_PARTS:
        done = [r for r in rows if "error" not in r[name]]
        if len(done) >= 2:
            xs = [r["factor"] for r in done]
            per_factor[name] = {k: float(np.polyfit(xs, [r[name][k] for r in done], 1)[0])
                                for k in ("luts", "ffs", "dsps", "bram36", "uram")}
    return per_factor


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
    parser.add_argument("--engine-parts", metavar="PRESET",
                        help="also synthesize the whole engine of PRESET part by part (control, issue, memory "
                        "units, port DMAs, each sequencer; u280-rtl-tiny takes about 20 minutes)")
    parser.add_argument("--lane-factors", default="",
                        help="with --engine-parts: also synthesize the lane-scaled sequencers at these multiples of "
                        "the preset's lanes (e.g. 1,2,4)")
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
        if args.engine_parts and not reason:
            report["engine_resources"] = engine_resources(args.engine_parts, args.timeout)
            if args.lane_factors:
                factors = [int(f) for f in args.lane_factors.split(",")]
                report["lane_scaling"] = lane_scaling(args.engine_parts, factors, args.timeout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
