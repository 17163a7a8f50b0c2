"""Helpers of the per-row and table sequencer tests (RMSNORM, REQUANT, EMBED, ROPE).

`check_cases` runs a list of cases in one simulation: the cases named in `failing` must answer
with `error` (their outputs are not compared, and the emulator does not run them: they are
operands it would accept or reject differently from a streaming engine, see the sequencers'
docstrings); every other case must give exactly the emulator's bytes without error or buffer
fault. Put the failing cases last, since the emulator never sees their inputs.
"""

from __future__ import annotations

import numpy as np

from llmfab.compiler.isa import Buffer
from llmfab.rtl.engine.sequencer import Sequencer
from llmfab.tests.rtl.engine.bench import Case, CaseRun, assert_cases, expect, run_cases
from llmfab.tests.rtl.engine.geometries import TINY, WIDE32
from llmfab.tests.rtl.units.vectors import act32_rows

ACT, WGT = int(Buffer.ACT), int(Buffer.WGT)
GEOMETRIES = {"tiny": TINY, "wide32": WIDE32}


def act32_block(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """`rows` x `cols` int64 ACT32 values: rows of every magnitude with the all-zero, single-nonzero,
    extreme and constant rows of tests/rtl/units/vectors.act32_rows among them (cycled)."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols), dtype=np.int64)
    pool = act32_rows(rng, rows, cols)
    return pool[rng.permutation(len(pool))[:rows]]


def int32_bytes(values) -> bytes:
    return np.asarray(values, dtype=np.int64).astype("<i4").tobytes()


def check_cases(sequencer: Sequencer, cases: list[Case], failing: set[str], simulator: str, work, toplevel: str,
                max_cycles: int = 20000) -> dict[str, CaseRun]:
    """Simulate `cases` (see the module docstring); returns the runs by case name."""
    good = [case for case in cases if case.name not in failing]
    loads, expected = expect(sequencer.geometry, good)
    by_name = dict(zip((case.name for case in good), zip(loads, expected)))
    all_loads = [by_name[case.name][0] if case.name in by_name else
                 [(b, a, p.hex()) for b, a, p in case.inputs] for case in cases]
    runs = run_cases(sequencer, cases, all_loads, simulator, work, toplevel, max_cycles)
    assert len(runs) == len(cases), f"{len(runs)} of {len(cases)} cases ran (case {cases[len(runs) - 1].name} hung?)"
    named = dict(zip((case.name for case in cases), runs))
    assert_cases(good, [named[case.name] for case in good], [by_name[case.name][1] for case in good])
    for name in failing:
        assert named[name].cycles is not None, f"case {name}: no done"
        assert named[name].error, f"case {name}: expected error"
    return named


def check_geometry(make_sequencer, make_cases, geometry: str, simulator: str, work, name: str, seed: int):
    """Build the sequencer at GEOMETRIES[geometry] and check the cases `make_cases(lanes, seed)`
    gives (cases, failing names); returns (geometry, cases, runs by name)."""
    g = GEOMETRIES[geometry]
    case_list, failing = make_cases(g.sfu_lanes, seed)
    runs = check_cases(make_sequencer(g), case_list, failing, simulator, work, f"seq_{name}_{geometry}")
    return g, case_list, runs
