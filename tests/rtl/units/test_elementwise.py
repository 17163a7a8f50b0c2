"""Residual add, product, RoPE, sigmoid and SiLU units against llmfab.sim.numerics on both
simulators (docs/numerics.md §8, §9, §10)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.elementwise import ProductUnit, ResidualAddUnit
from llmfab.rtl.units.rope import RopeUnit
from llmfab.rtl.units.sigmoid import SigmoidUnit, SiluUnit
from llmfab.sim import numerics
from llmfab.sim.fixed_point import TRIG18
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, lane_beats, run_stream
from llmfab.tests.rtl.units.vectors import act32_values

LANES = 4


def _pairs(seed: int):
    rng = np.random.default_rng(seed)
    a = act32_values(rng, 300, LANES)
    b = act32_values(rng, len(a) - 17, LANES)[:len(a)]
    return a, np.resize(b, len(a))


@pytest.mark.parametrize("simulator", simulator_params())
def test_residual_add_unit_matches_numerics(simulator, tmp_path):
    a, b = _pairs(10)
    case = StreamCase("residual_add_unit", ResidualAddUnit(LANES), lane_beats(LANES, a=a, b=b),
                      lane_beats(LANES, y=numerics.residual_add(a, b)))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.7, ready_probability=0.6)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_product_unit_matches_numerics(simulator, tmp_path):
    a, b = _pairs(11)
    case = StreamCase("product_unit", ProductUnit(LANES), lane_beats(LANES, a=a, b=b),
                      lane_beats(LANES, y=numerics.multiply(a, b)))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.7, ready_probability=0.6)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_rope_unit_matches_numerics(simulator, tmp_path):
    rng = np.random.default_rng(12)
    x1, x2 = act32_values(rng, 200, LANES), act32_values(rng, 200, LANES)
    positions = rng.integers(0, 4096, len(x1))
    inv_freq = 10000.0 ** -rng.random(len(x1))
    angle_cos, angle_sin = numerics.rope_tables(inv_freq, positions)
    cos, sin = np.diagonal(angle_cos).copy(), np.diagonal(angle_sin).copy()
    cos[:4], sin[:4] = [TRIG18.max_int, TRIG18.min_int, 1 << 16, 0], [TRIG18.min_int, TRIG18.max_int, 0, -(1 << 16)]
    rotated = numerics.apply_rope(np.stack([x1, x2], axis=-1)[:, None, :], cos[:, None, None], sin[:, None, None])
    case = StreamCase("rope_unit", RopeUnit(LANES), lane_beats(LANES, x1=x1, x2=x2, cos=cos, sin=sin),
                      lane_beats(LANES, o1=rotated[:, 0, 0], o2=rotated[:, 0, 1]))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.7, ready_probability=0.6)
    assert_beats_equal(case, run)


def _sigmoid_inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    near = rng.integers(-(16 << 16), 16 << 16, 200)  # where sigmoid is not saturated
    return np.resize(np.concatenate([near, act32_values(rng, 100)]), 300 + (-300 % LANES) + LANES * 5)


@pytest.mark.parametrize("simulator", simulator_params())
def test_sigmoid_unit_matches_numerics(simulator, tmp_path):
    x = _sigmoid_inputs(13)
    case = StreamCase("sigmoid_unit", SigmoidUnit(LANES), lane_beats(LANES, x=x),
                      lane_beats(LANES, p=numerics.sigmoid(x)))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_silu_unit_matches_numerics_at_one_beat_per_cycle(simulator, tmp_path):
    x = _sigmoid_inputs(14)
    case = StreamCase("silu_unit", SiluUnit(LANES), lane_beats(LANES, x=x), lane_beats(LANES, y=numerics.silu(x)))
    run = run_stream(case, simulator, tmp_path)
    assert_beats_equal(case, run)
    assert run.out_cycles[0] - run.in_cycles[0] == SiluUnit.LATENCY
    assert np.all(np.diff(run.out_cycles) == 1)
