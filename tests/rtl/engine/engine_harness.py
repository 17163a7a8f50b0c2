"""Run a program folder on the engine RTL and on the emulator, and compare them.

    runs = [Run("prefill", 3, 0, tokens=[1, 2, 3]), Run("decode", 1, 3, tokens=[4])]
    result = run_engine(program, runs, "icarus", tmp_path)          # RTL (tests/rtl/engine/cocotb_engine.py)
    expected = emulate(program, runs)                                # sim/emulator.Emulator
    assert_same_hbm(program, result, expected)                       # every pseudo-channel, every run
    result.cycles_by_opcode(0)                                       # {"LOAD": {...}, "ADD": {...}}

`run_engine` loads the program's HBM images into one AXI memory model per port (the images at the
port's pointer, the rest of each memory a random background that must stay untouched), the
instruction words into port 0's memory, writes the arguments over AXI4-Lite as XRT does, runs
the routines in order, and reads back every memory and the status registers after each run. With
the trace (the default, on the Amaranth core) every retired instruction's ready/start/end cycles
come back, so cycles can be attributed per opcode. `kernel=True` runs the XRT-named top instead
(no trace).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmfab.compiler.isa import Opcode
from llmfab.compiler.program import Program
from llmfab.rtl.axi_models import AMARANTH_SEPARATOR, XRT_SEPARATOR
from llmfab.rtl.emit import kernel_sources
from llmfab.rtl.engine.engine import INSTRUCTIONS_ARGUMENT, STATUS, Engine
from llmfab.rtl.engine.issue import describe_error
from llmfab.rtl.kernel_shell import pointer_argument
from llmfab.rtl.sim_runner import simulate
from llmfab.sim.emulator import Emulator

ENGINE_TEST_MODULE = "llmfab.tests.rtl.engine.cocotb_engine"
BUILD_ARGS = {"icarus": ("-g2005",), "verilator": ("--output-split", "0", "-CFLAGS", "-O0")}
PAGE = 4096
POINTER = 2 * PAGE  # every port's buffer starts here (not 0, so the pointer is really added)


@dataclass(frozen=True)
class Run:
    """One call of a routine: T = n_tokens tokens at position P, with the token ids the host writes."""

    routine: str
    n_tokens: int
    position: int
    tokens: tuple[int, ...] | None = None


@dataclass
class RunResult:
    status: dict
    cycles: int
    trace: list
    hbm: list[bytes]  # per pseudo-channel, its used bytes after the run

    @property
    def error(self) -> str | None:
        code = self.status["error_code"]
        return describe_error(code, self.status["error_address"]) if code else None


@dataclass
class EngineResult:
    runs: list[RunResult] = field(default_factory=list)

    def cycles_by_opcode(self, run: int = 0) -> dict:
        """opcode name -> instructions, cycles executing (start..end) and cycles waiting at the head of
        the unit's queue for tokens (ready..start), summed."""
        table = defaultdict(lambda: {"count": 0, "cycles": 0, "wait": 0})
        for t in self.runs[run].trace:
            row = table[Opcode(t["opcode"]).name]
            row["count"] += 1
            row["cycles"] += t["end"] - t["start"]
            row["wait"] += t["start"] - t["ready"]
        return dict(table)


def _align(n: int) -> int:
    return -(-n // PAGE) * PAGE


def run_engine(program: Program, runs: list[Run], simulator: str, work: Path, *, engine: Engine | None = None,
               kernel: bool = False, stall: float = 0.0, max_cycles: int = 200000, toplevel: str = "engine",
               background_seed: int = 99) -> EngineResult:
    """Run `runs` of `program` on the engine (an `Engine` built for the program's hardware unless given)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    hw = program.hardware
    ports = hw.engine.hbm_ports
    engine = engine or Engine.for_config(hw, trace=not kernel)
    pcs = {e["pc"]: e for e in program.manifest["hbm"]["pcs"]}
    instructions = program.instructions_bytes()
    used = [pcs[p]["used_bytes"] if p in pcs else 0 for p in range(ports)]
    instr_pointer = POINTER + _align(used[0]) + PAGE
    sizes = [POINTER + _align(used[p]) + PAGE for p in range(ports)]
    sizes[0] = instr_pointer + _align(len(instructions)) + PAGE
    memories = []
    for p in range(ports):
        loads = []
        path = program.image_path(p)
        if path is not None:
            loads.append([POINTER, str(path)])
        if p == 0:
            (work / "instructions.bin").write_bytes(instructions)
            loads.append([instr_pointer, str(work / "instructions.bin")])
        memories.append({"size": sizes[p], "fill": background_seed + p, "loads": loads})
    # the runtime part of every pseudo-channel starts as zeros, as in the emulator
    for p in range(ports):
        start = pcs[p]["image_bytes"] if p in pcs else 0
        if used[p] > start:
            part = work / f"zeros{p}.bin"
            part.write_bytes(bytes(used[p] - start))
            memories[p]["loads"].insert(0, [POINTER + start, str(part)])
    regs = engine.register_map
    registers = {a.name: [a.offset, a.size_bytes] for a in regs.arguments}
    registers.update({r.name: [r.offset, 4] for r in regs.status})
    pointers = {pointer_argument(p): POINTER for p in range(ports)}
    pointers[INSTRUCTIONS_ARGUMENT] = instr_pointer
    limits = program.manifest["limits"]
    io = program.manifest["io"]["input_ids"]
    run_specs = []
    for i, run in enumerate(runs):
        entry = program.manifest["routines"][run.routine]
        arguments = {"entry": entry["entry"], "count": entry["count"], "n_tokens": run.n_tokens,
                     "position": run.position, "sinks": limits.get("sinks") or 0, "window": limits.get("window") or 0,
                     "chunk": limits["max_prefill_tokens"]}
        dumps = [[p, 0, sizes[p], str(work / f"run{i}_port{p}.bin")] for p in range(ports)]
        run_specs.append({"arguments": arguments, "tokens": list(run.tokens) if run.tokens is not None else None,
                          "input": {"port": io["pc"], "addr": POINTER + io["offset"]}, "dumps": dumps})
    results_path = work / "engine-results.json"
    setup = {
        "separator": XRT_SEPARATOR if kernel else AMARANTH_SEPARATOR,
        "clock": "ap_clk" if kernel else "clk", "reset": "ap_rst_n" if kernel else "rst", "reset_active_low": kernel,
        "data_width": hw.engine.axi_data_width_bits, "memories": memories, "registers": registers,
        "pointers": pointers, "runs": run_specs, "status": [name for name, _ in STATUS], "stall": stall,
        "max_cycles": max_cycles, "trace": not kernel and engine.trace_enabled, "results": str(results_path),
    }
    setup_path = work / "engine-setup.json"
    setup_path.write_text(json.dumps(setup))
    design = kernel_sources(engine, toplevel).verilog if kernel else engine
    simulate(design, toplevel=toplevel, test_module=ENGINE_TEST_MODULE, simulator=simulator,
             build_args=BUILD_ARGS[simulator], extra_env={"ENGINE_SETUP": str(setup_path)})
    result = EngineResult()
    for i, r in enumerate(json.loads(results_path.read_text())):
        hbm, backgrounds = [], []
        for p in range(ports):
            dump = (work / f"run{i}_port{p}.bin").read_bytes()
            hbm.append(dump[POINTER:POINTER + used[p]])
            backgrounds.append(dump)
        result.runs.append(RunResult(r["status"], r["cycles"], r["trace"], hbm))
        _check_background(backgrounds, used, instr_pointer, len(instructions), background_seed)
    return result


def _check_background(dumps, used, instr_pointer, instr_bytes, seed) -> None:
    """Bytes outside the pseudo-channels' used ranges (and the instruction words) must be untouched."""
    import random

    for p, dump in enumerate(dumps):
        expected = bytearray(random.Random(seed + p).randbytes(len(dump)))
        got = bytearray(dump)
        for lo, hi in ([(POINTER, POINTER + used[p])] + ([(instr_pointer, instr_pointer + instr_bytes)] if p == 0 else [])):
            expected[lo:hi] = got[lo:hi]
        if got != expected:
            at = next(k for k in range(len(got)) if got[k] != expected[k])
            raise AssertionError(f"port {p}: byte 0x{at:x} outside the program's pseudo-channel bytes was written")


def emulate(program: Program, runs: list[Run]) -> list[list[bytes]]:
    """The emulator's pseudo-channels (used bytes) after each run."""
    emu = Emulator(program)
    emu.reset()
    snapshots = []
    for run in runs:
        if run.tokens is not None:
            emu.write_tokens(run.tokens)
        emu.start(run.routine, run.n_tokens, run.position)
        snapshots.append([bytes(memory) for memory in emu.hbm])
    return snapshots


def assert_same_hbm(program: Program, result: EngineResult, expected: list[list[bytes]]) -> None:
    """Every run ended without error and left every pseudo-channel as the emulator did."""
    regions = program.manifest.get("regions", {})
    for i, (run, want) in enumerate(zip(result.runs, expected)):
        assert run.error is None, f"run {i}: the engine stopped with an error: {run.error}"
        for pc, (got, ref) in enumerate(zip(run.hbm, want)):
            if got != ref:
                a, b = np.frombuffer(got, np.uint8), np.frombuffer(ref, np.uint8)
                bad = np.flatnonzero(a != b)
                where = [name for name, r in regions.items() if r["pc"] <= pc and r["offset"] <= bad[0]]
                raise AssertionError(f"run {i}: pseudo-channel {pc} byte {bad[0]} (of {bad.size} differing): got "
                                     f"0x{a[bad[0]]:02x}, expected 0x{b[bad[0]]:02x}; regions up to there: {where[-3:]}")
    assert len(result.runs) == len(expected)


def testbench_memory_timing(clock_hz: float):
    """The HBM timing of the harness' AXI memory models: every beat at once, after
    rtl/axi_models.DEFAULT_READ_LATENCY cycles."""
    from llmfab.rtl.axi_models import DEFAULT_READ_LATENCY
    from llmfab.sim.hbm_timing import HbmTiming

    return HbmTiming(pc_efficiency=1.0, burst_gap_cycles=0.0, read_latency_ns=DEFAULT_READ_LATENCY * 1e9 / clock_hz)


def cycle_check(program: Program, runs: list[Run], result: EngineResult) -> dict:
    """The RTL's cycles of every retired instruction beside the cycle model's (sim/op_timing.op_cost
    under the as-built datapath, with the testbench's memory timing), per instruction and summed
    per opcode over the runs, with their ratio RTL / model.

    RTL cycles are start to end of each instruction (waits for dependency tokens excluded), as the
    model's are."""
    from llmfab.sim.cycle_model import RoutineTimer
    from llmfab.sim.cycle_program import program_from_folder
    from llmfab.sim.op_timing import Datapath

    timed = program_from_folder(program.folder)
    timer = RoutineTimer(timed.instructions, timed.hardware, hbm=testbench_memory_timing(timed.hardware.clock_hz),
                         datapath=Datapath.RTL)
    rows, totals = [], defaultdict(lambda: {"rtl": 0, "model": 0.0})
    for i, run in enumerate(runs):
        regs = timed.registers(run.n_tokens, run.position)
        for t in result.runs[i].trace:
            name = Opcode(t["opcode"]).name
            if name == "END":
                continue
            model = timer.cost(t["addr"], regs).cycles
            rows.append({"run": i, "addr": t["addr"], "opcode": name, "rtl": t["end"] - t["start"], "model": model})
            totals[name]["rtl"] += t["end"] - t["start"]
            totals[name]["model"] += model
    for row in totals.values():
        row["ratio"] = row["rtl"] / row["model"] if row["model"] else None
    return {"by_class": dict(sorted(totals.items())), "by_instruction": rows}
