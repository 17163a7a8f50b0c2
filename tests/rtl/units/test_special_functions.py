"""Reciprocal, rsqrt and exp2 units against llmfab.sim.numerics on both simulators (§6.1, §6.2, §7.1)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.exp2 import Exp2Unit
from llmfab.rtl.units.reciprocal import ReciprocalUnit
from llmfab.rtl.units.rsqrt import RsqrtUnit
from llmfab.sim import numerics
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, lane_beats, run_stream

LANES = 4


def _positive_edge_values(rng, width: int, count: int) -> np.ndarray:
    """Random magnitudes over every exponent, powers of two and their neighbours, 1 and the maximum."""
    exponents = rng.integers(0, width, count)
    random = (rng.integers(0, 1 << 62, count) >> (62 - exponents - 1)) | (np.int64(1) << exponents)
    powers = np.int64(1) << np.arange(width, dtype=np.int64)
    edges = np.concatenate([powers, powers[1:] - 1, powers[1:] + 1, [1, 2, 3, (1 << width) - 1]])
    values = np.concatenate([random, edges])
    values = values[(values > 0) & (values < (1 << width))]
    return np.resize(values, -(-len(values) // LANES) * LANES)


def test_edge_values_cover_every_exponent():
    values = _positive_edge_values(np.random.default_rng(0), 40, 50)
    assert set(numerics.bit_length(values).tolist()) == set(range(1, 41))


@pytest.mark.parametrize("simulator", simulator_params())
def test_reciprocal_unit_matches_numerics(simulator, tmp_path):
    m = _positive_edge_values(np.random.default_rng(1), 40, 300)
    r, e = numerics.reciprocal(m)
    unit = ReciprocalUnit(lanes=LANES, width=40)
    case = StreamCase("reciprocal_unit", unit, lane_beats(LANES, m=m), lane_beats(LANES, r=r, e=e))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_rsqrt_unit_matches_numerics(simulator, tmp_path):
    v = _positive_edge_values(np.random.default_rng(2), 48, 300)
    y, h = numerics.rsqrt(v)
    unit = RsqrtUnit(lanes=LANES, width=48)
    case = StreamCase("rsqrt_unit", unit, lane_beats(LANES, v=v), lane_beats(LANES, y=y, h=h))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_exp2_unit_matches_numerics_and_streams_one_beat_per_cycle(simulator, tmp_path):
    rng = np.random.default_rng(3)
    width = 24
    z = np.concatenate([
        -rng.integers(0, 1 << 17, 200),  # the interesting range: 2^0 .. 2^-2
        -rng.integers(0, 1 << (width - 1), 200),  # down to the softmax floor and beyond
        [0, -1, -511, -512, -513, -(1 << 16), -(1 << 16) - 1, -(17 << 16), -(18 << 16) + 1,
         -(18 << 16), -(32 << 16), -(1 << (width - 1))]])
    z = np.resize(z, -(-len(z) // LANES) * LANES)
    unit = Exp2Unit(lanes=LANES, width=width)
    case = StreamCase("exp2_unit", unit, lane_beats(LANES, z=z), lane_beats(LANES, p=numerics.exp2(z)))
    run = run_stream(case, simulator, tmp_path)
    assert_beats_equal(case, run)
    assert run.out_cycles[0] - run.in_cycles[0] == Exp2Unit.LATENCY
    assert np.all(np.diff(run.out_cycles) == 1), "one beat per cycle without back-pressure"
