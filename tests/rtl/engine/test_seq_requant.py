"""REQUANT sequencer (A8 and A16 rows) against the emulator's handler (sim/emulator_ops.requant)
on both simulators."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import ActWidth, Instruction, Opcode, Registers, RowSource
from llmfab.compiler.memory_plan import act_row_stride
from llmfab.rtl.engine.seq_requant import RequantSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.tests.rtl.engine.bench import Case
from llmfab.tests.rtl.engine.row_cases import ACT, GEOMETRIES, act32_block, check_geometry, int32_bytes

MAX_COLS = 64


def requant_case(name, rng, rows, cols, src, dst, width=ActWidth.A8, mode=None, values=None) -> Case:
    inst = Instruction(Opcode.REQUANT, rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=src, dst_buf=ACT,
                       dst_addr=dst, cols=cols, mode=int(width) if mode is None else mode)
    x = act32_block(rng, rows, cols) if values is None else values
    stride = act_row_stride(cols, ActWidth(min(int(inst.mode), 1)))
    return Case(name, inst, rows, Registers(rows, 0), inputs=[(ACT, src, int32_bytes(x))] if rows * cols else [],
                outputs=[(ACT, dst, rows * stride + 8)])


def cases(lanes: int, seed: int) -> tuple[list[Case], set[str]]:
    rng = np.random.default_rng(seed)
    n = 4 * lanes
    extremes = np.array([[-(1 << 31), (1 << 31) - 1, 0, -1, 1, 65535, -65536] * 2,
                         [0] * 14, [1] + [0] * 13, [-(1 << 31)] * 14, [-1, 1] * 7], dtype=np.int64)
    out = []
    for width in ActWidth:
        tag = width.name.lower()
        out += [
            requant_case(f"aligned_{tag}", rng, 3, n, 0, 2048, width),
            requant_case(f"odd_unaligned_{tag}", rng, 4, 13, 4, 1501, width),
            requant_case(f"one_col_{tag}", rng, 2, 1, 401, 1203, width),
            requant_case(f"extremes_{tag}", rng, 5, 14, 32, 2600, width, values=extremes),
            requant_case(f"widest_{tag}", rng, 1, MAX_COLS, 1000, 3000, width),
        ]
    out += [
        requant_case("no_rows", rng, 0, 8, 0, 700),
        requant_case("mode_2", rng, 1, 8, 0, 700, mode=2),
        requant_case("no_cols", rng, 1, 0, 0, 700),
        requant_case("beyond_max_cols", rng, 1, MAX_COLS + 1, 0, 700),
        requant_case("overlap", rng, 2, 8, 0, 40),
    ]
    return out, {"mode_2", "no_cols", "beyond_max_cols", "overlap"}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("simulator", simulator_params())
def test_requant_sequencer_equals_emulator(geometry, simulator, tmp_path):
    g, _, runs = check_geometry(lambda g: RequantSequencer(g, MAX_COLS), cases, geometry, simulator,
                                        tmp_path, "requant", 11)
    for width in ("a8", "a16"):
        assert runs[f"aligned_{width}"].cycles == RequantSequencer.cycles(3, 4 * g.sfu_lanes, g.sfu_lanes)
    assert runs["no_rows"].cycles == 1
