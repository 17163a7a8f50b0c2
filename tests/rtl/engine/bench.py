"""Checking a sequencer against the emulator: one instruction on random buffer contents.

A `Case` names an instruction, its row count and registers, the buffer bytes it starts from
(`inputs`) and the regions whose bytes it must produce (`outputs`). `expect` runs the emulator's
handler (sim/emulator_ops.py, the golden model) on a buffer-only emulator; `run_cases` runs the
same cases on a simulator through tests/rtl/engine/cocotb_sequencer.py and returns, per case, the
bytes read back and the cycles from start to done; `assert_cases` names the first differing byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmfab.compiler.isa import Buffer, Instruction, Opcode, Registers
from llmfab.rtl.engine.geometry import EngineGeometry
from llmfab.rtl.engine.sequencer import RegistersLayout, Sequencer
from llmfab.rtl.sim_runner import simulate
from llmfab.sim.emulator import Emulator
from llmfab.sim.emulator_ops import HANDLERS
from llmfab.tests.rtl.engine.bench_design import SequencerBench

SEQUENCER_TEST_MODULE = "llmfab.tests.rtl.engine.cocotb_sequencer"
BUILD_ARGS = {"icarus": ("-g2005",), "verilator": ("--output-split", "0", "-CFLAGS", "-O0")}


class BufferEmulator(Emulator):
    """The emulator's buffers and COMPUTE handlers without a program (no HBM, no instruction stream)."""

    def __init__(self, geometry: EngineGeometry):  # noqa: D107 - the program-less state Emulator's handlers use
        g = geometry.buffers
        self._init_buffers({buf: words * g.word_bytes for buf, words in g.words.items()})
        self.instructions, self.current = [], 0
        self.registers = Registers(0, 0)

    def run(self, inst: Instruction, rows: int, regs: Registers) -> None:
        self.instructions, self.current, self.registers = [inst], 0, regs
        HANDLERS[Opcode(inst.opcode)](self, inst, rows, regs.position)


@dataclass
class Case:
    """One instruction on given buffer bytes; `outputs` are (buffer, byte address, bytes) to compare."""

    name: str
    inst: Instruction
    rows: int
    regs: Registers
    inputs: list[tuple[int, int, bytes]] = field(default_factory=list)
    outputs: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class CaseRun:
    """What the simulation of one case gave."""

    cycles: int | None
    error: int
    fault: int
    reads: list[bytes]


def expect(geometry: EngineGeometry, cases: list[Case]) -> tuple[list[list], list[list[bytes]]]:
    """(backdoor loads, expected output bytes) of every case, from the emulator. The output regions'
    bytes before the instruction are loaded too, so bytes it leaves alone compare equal."""
    emu = BufferEmulator(geometry)
    loads, expected = [], []
    for case in cases:
        for buf, addr, payload in case.inputs:
            emu.put(buf, addr, np.frombuffer(payload, dtype=np.uint8))
        before = [(buf, addr, bytes(emu.span(buf, addr, n))) for buf, addr, n in case.outputs]
        emu.run(case.inst, case.rows, case.regs)
        loads.append([*((b, a, p.hex()) for b, a, p in case.inputs), *((b, a, p.hex()) for b, a, p in before)])
        expected.append([bytes(emu.span(buf, addr, n)) for buf, addr, n in case.outputs])
    return loads, expected


def run_cases(sequencer: Sequencer, cases: list[Case], loads: list[list], simulator: str, work: Path,
              toplevel: str, max_cycles: int = 20000) -> list[CaseRun]:
    """Simulate the cases in order (buffer contents carry over) and return what each produced."""
    vectors, results = work / f"{toplevel}-cases.json", work / f"{toplevel}-results.json"
    vectors.write_text(json.dumps({
        "word_bytes": sequencer.geometry.word_bytes, "max_cycles": max_cycles,
        "cases": [{"loads": load, "inst": int.from_bytes(case.inst.encode(), "little"), "rows": case.rows,
                   "regs": _pack_registers(case.regs), "reads": [list(o) for o in case.outputs]}
                  for case, load in zip(cases, loads)]}))
    simulate(SequencerBench(sequencer), toplevel=toplevel, test_module=SEQUENCER_TEST_MODULE, simulator=simulator,
             build_args=BUILD_ARGS[simulator], extra_env={"SEQ_CASES": str(vectors), "SEQ_RESULTS": str(results)})
    return [CaseRun(r["cycles"], r["error"], r["fault"], [bytes.fromhex(x) for x in r["reads"]])
            for r in json.loads(results.read_text())]


def check(sequencer: Sequencer, cases: list[Case], simulator: str, work: Path, toplevel: str,
          max_cycles: int = 20000) -> list[CaseRun]:
    """Run the cases and assert every output byte equals the emulator's; returns the runs."""
    loads, expected = expect(sequencer.geometry, cases)
    runs = run_cases(sequencer, cases, loads, simulator, work, toplevel, max_cycles)
    assert_cases(cases, runs, expected)
    return runs


def assert_cases(cases: list[Case], runs: list[CaseRun], expected: list[list[bytes]]) -> None:
    for case, run, want in zip(cases, runs, expected):
        assert run.cycles is not None, f"case {case.name}: no done within the cycle limit"
        assert not run.error, f"case {case.name}: the sequencer raised error"
        assert not run.fault, f"case {case.name}: a buffer access went outside a buffer"
        for (buf, addr, n), got, ref in zip(case.outputs, run.reads, want):
            if got != ref:
                at = next(k for k in range(n) if got[k] != ref[k])
                raise AssertionError(f"case {case.name}: {Buffer(buf).name} byte {addr + at} (offset {at} of the "
                                     f"{n}-byte output at {addr}): got 0x{got[at]:02x}, expected 0x{ref[at]:02x}; "
                                     f"{sum(a != b for a, b in zip(got, ref))} bytes differ")
    assert len(runs) == len(cases), f"{len(runs)} of {len(cases)} cases ran"


def _pack_registers(regs: Registers) -> int:
    return RegistersLayout.const({"n_tokens": regs.n_tokens, "position": regs.position, "sinks": regs.sinks,
                                  "window": regs.window, "chunk": regs.chunk}).as_bits()
