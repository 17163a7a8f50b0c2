"""ROPE sequencer against the emulator's handler (sim/emulator_ops.rope) on both simulators."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import Instruction, Opcode, Registers, RowSource
from llmfab.rtl.engine.seq_rope import RopeSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.sim.fixed_point import TRIG18
from llmfab.sim.numerics import rope_tables
from llmfab.tests.rtl.engine.bench import Case
from llmfab.tests.rtl.engine.row_cases import ACT, GEOMETRIES, WGT, act32_block, check_geometry, int32_bytes

MAX_DEPTH = 32
TRIG18_LIMITS = [TRIG18.min_int, TRIG18.max_int, 65536, -65536, 0, 1, -1]


def rope_rows(rng, rows: int, depth: int, kind: str = "model") -> np.ndarray:
    """int64 `[rows, D]` RoPE rows (cos then sin): a model's tables at random positions, or
    random TRIG18 values with the format's limits."""
    half = max(depth // 2, 1)
    if kind == "model":
        inv_freq = 10000.0 ** (-np.arange(half) / half)
        cos, sin = rope_tables(inv_freq, rng.integers(0, 4096, rows))
        return np.concatenate([cos, sin], axis=1)[:, :depth]
    values = rng.integers(TRIG18.min_int, TRIG18.max_int + 1, (rows, depth))
    values.flat[:len(TRIG18_LIMITS)] = TRIG18_LIMITS[:values.size]
    return values


def rope_case(name, rng, rows, cols, depth, src, dst, table, kind="model", values=None, table_buf=WGT) -> Case:
    inst = Instruction(Opcode.ROPE, rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=src, src1_buf=table_buf,
                       src1_addr=table, dst_buf=ACT, dst_addr=dst, cols=cols, depth=depth)
    x = act32_block(rng, rows, cols) if values is None else values
    inputs = [(ACT, src, int32_bytes(x))]
    if depth:
        inputs.append((table_buf, table, int32_bytes(rope_rows(rng, rows, depth, kind))))
    return Case(name, inst, rows, Registers(rows, 0), inputs=inputs, outputs=[(ACT, dst, 4 * rows * cols + 8)])


def cases(lanes: int, seed: int) -> tuple[list[Case], set[str]]:
    rng = np.random.default_rng(seed)
    d = 4 * lanes if 4 * lanes <= MAX_DEPTH else 2 * lanes
    extremes = np.resize(np.array([-(1 << 31), (1 << 31) - 1, 0, -1, 1, 65535, -65536, -(1 << 31)]), (3, 16))
    out = [
        rope_case("aligned", rng, 2, 3 * d, d, 0, 2048, 0),
        rope_case("in_place", rng, 3, 4 * lanes, 2 * lanes, 512, 512, 256),
        rope_case("odd_unaligned", rng, 3, 18, 6, 4, 1502, 12, kind="random"),
        rope_case("pairs_of_two", rng, 2, 4, 2, 900, 1000, 600),
        rope_case("extremes", rng, 3, 16, 8, 1100, 2600, 700, kind="random", values=extremes),
        rope_case("widest", rng, 1, 2 * MAX_DEPTH, MAX_DEPTH, 1300, 3200, 900),
        rope_case("one_head", rng, 1, 10, 10, 1600, 1700, 1100, kind="random"),
        rope_case("no_rows", rng, 0, 8, 4, 0, 700, 0),
        rope_case("no_cols", rng, 2, 0, 4, 0, 700, 0),
        rope_case("no_depth", rng, 1, 8, 0, 0, 700, 0),
        rope_case("odd_depth", rng, 1, 9, 3, 0, 700, 0),
        rope_case("beyond_max_depth", rng, 1, MAX_DEPTH + 2, MAX_DEPTH + 2, 0, 700, 0),
        rope_case("cols_not_heads", rng, 1, 10, 4, 0, 700, 0),
        rope_case("overlap_src", rng, 2, 8, 4, 0, 16, 0),
        rope_case("overlap_table", rng, 1, 8, 4, 0, 700, 720, table_buf=ACT),
    ]
    bad_table = rope_case("table_too_wide", rng, 2, 8, 4, 0, 700, 0)
    table = np.frombuffer(bad_table.inputs[1][2], dtype="<i4").copy()
    table[5] = 1 << 17
    bad_table.inputs[1] = (WGT, 0, table.tobytes())
    out.append(bad_table)
    return out, {"no_depth", "odd_depth", "beyond_max_depth", "cols_not_heads", "overlap_src", "overlap_table",
                 "table_too_wide"}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("simulator", simulator_params())
def test_rope_sequencer_equals_emulator(geometry, simulator, tmp_path):
    g, case_list, runs = check_geometry(lambda g: RopeSequencer(g, MAX_DEPTH), cases, geometry, simulator,
                                        tmp_path, "rope", 17)
    d = case_list[0].inst.depth
    assert runs["aligned"].cycles == RopeSequencer.cycles(2, 3 * d, d, g.sfu_lanes)
    assert runs["no_rows"].cycles == runs["no_cols"].cycles == 1
