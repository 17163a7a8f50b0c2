"""RMSNORM sequencer against the emulator's handler (sim/emulator_ops.rms_norm) on both simulators."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llmfab.compiler.isa import Instruction, Opcode, Registers, RowSource
from llmfab.rtl.engine.seq_rmsnorm import RmsNormSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.sim.numerics import prepare_norm
from llmfab.tests.rtl.engine.bench import Case
from llmfab.tests.rtl.engine.row_cases import ACT, GEOMETRIES, WGT, act32_block, check_geometry, int32_bytes

MAX_COLS = 48


def norm_record(gain, gain_shift: int, sqrt_m: int, sqrt_s: int, eps: int) -> bytes:
    """The norm record of docs/isa.md: int64 eps_scaled, int32 gain_shift, sqrt_n_mantissa,
    sqrt_n_shift, 0, then int32 gains."""
    return (np.array([eps], dtype="<i8").tobytes() + int32_bytes([gain_shift, sqrt_m, sqrt_s, 0])
            + int32_bytes(gain))


def rmsnorm_case(name, rng, rows, cols, src, dst, record_addr, gamma_scale=1.0, eps=1e-5, header=None,
                 gains=None, values=None) -> Case:
    inst = Instruction(Opcode.RMSNORM, rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=src, src1_buf=WGT,
                       src1_addr=record_addr, dst_buf=ACT, dst_addr=dst, cols=cols)
    norm = prepare_norm(gamma_scale * (1 + rng.standard_normal(max(cols, 1)))[:cols], eps) if cols else None
    fields = header or ((norm.gain_shift, norm.sqrt_n_mantissa, norm.sqrt_n_shift, norm.eps_scaled) if norm
                        else (16, 1 << 15, 13, 0))
    gain = (norm.gain if norm else []) if gains is None else gains
    x = act32_block(rng, rows, cols) if values is None else values
    return Case(name, inst, rows, Registers(rows, 0),
                inputs=[(ACT, src, int32_bytes(x)), (WGT, record_addr, norm_record(gain, *fields))],
                outputs=[(ACT, dst, 4 * rows * cols + 8)])


def cases(lanes: int, seed: int) -> tuple[list[Case], set[str]]:
    rng = np.random.default_rng(seed)
    n = 4 * lanes
    extremes = np.array([[-(1 << 31), (1 << 31) - 1, 0, -1, 1, 65535, -65536] * 2, [0] * 14, [1] + [0] * 13,
                         [-(1 << 31)] * 14, [(1 << 15) - 1] * 14], dtype=np.int64)
    port_gains = np.resize(np.array([-(1 << 17), (1 << 17) - 1, 0, 1, -1]), 14)
    out = [
        rmsnorm_case("aligned", rng, 3, n, 0, 2048, 0),
        rmsnorm_case("small_gamma_unaligned", rng, 4, 13, 4, 1502, 12, gamma_scale=0.02),
        rmsnorm_case("in_place", rng, 2, 11, 600, 600, 200, eps=0.1),
        rmsnorm_case("one_col", rng, 2, 1, 1001, 1203, 301),
        rmsnorm_case("extremes", rng, 5, 14, 32, 2600, 400, values=extremes),
        rmsnorm_case("port_limits", rng, 5, 14, 32, 2900, 500, values=extremes, gains=port_gains,
                     header=(20, 65535, 8, (1 << 40) - 1)),
        rmsnorm_case("no_eps", rng, 3, 9, 64, 3200, 600, eps=0.0),
        rmsnorm_case("widest", rng, 1, MAX_COLS, 1000, 3400, 700),
        rmsnorm_case("no_rows", rng, 0, 8, 0, 700, 0),
        rmsnorm_case("no_cols", rng, 1, 0, 0, 700, 0),
        rmsnorm_case("beyond_max_cols", rng, 1, MAX_COLS + 1, 0, 700, 0),
        rmsnorm_case("overlap_src", rng, 2, 8, 0, 4, 0),
        rmsnorm_case("eps_too_wide", rng, 1, 8, 0, 700, 0, header=(16, 1 << 15, 13, 1 << 40)),
        rmsnorm_case("shift_too_wide", rng, 1, 8, 0, 700, 0, header=(128, 1 << 15, 13, 5)),
        rmsnorm_case("mantissa_too_wide", rng, 1, 8, 0, 700, 0, header=(16, 1 << 16, 13, 5)),
        rmsnorm_case("gain_too_wide", rng, 2, 8, 0, 700, 0, gains=[0, 0, 0, 0, 0, 1 << 17, 0, 0]),
    ]
    overlap_record = rmsnorm_case("overlap_record", rng, 1, 8, 0, 3000, 0)
    overlap_record.inst = replace(overlap_record.inst, src1_buf=ACT, src1_addr=3020)
    overlap_record.inputs[1] = (ACT, 3020, overlap_record.inputs[1][2])
    out.append(overlap_record)
    return out, {"no_cols", "beyond_max_cols", "overlap_src", "eps_too_wide", "shift_too_wide", "mantissa_too_wide",
                 "gain_too_wide", "overlap_record"}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("simulator", simulator_params())
def test_rmsnorm_sequencer_equals_emulator(geometry, simulator, tmp_path):
    g, _, runs = check_geometry(lambda g: RmsNormSequencer(g, MAX_COLS), cases, geometry, simulator,
                                        tmp_path, "rmsnorm", 13)
    assert runs["aligned"].cycles == RmsNormSequencer.cycles(3, 4 * g.sfu_lanes, g.sfu_lanes)
    assert runs["no_rows"].cycles == 1
