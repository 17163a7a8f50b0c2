"""Per-token requantization, KV4 quantization and RMSNorm units against llmfab.sim.numerics on
both simulators (docs/numerics.md §3, §6.3, §6.4)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.requantize import RequantizeUnit
from llmfab.sim import numerics
from llmfab.tests.rtl.units.rows import row_beats
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, run_stream
from llmfab.tests.rtl.units.vectors import act32_rows

LANES = 4
LENGTH = 16  # elements per row: 4 beats of 4 lanes
MAX_BEATS = 8


@pytest.mark.parametrize("simulator", simulator_params())
def test_requantize_unit_matches_numerics(simulator, tmp_path):
    x = act32_rows(np.random.default_rng(20), 60, LENGTH)
    act = numerics.requantize_per_token(x)
    unit = RequantizeUnit(LANES, MAX_BEATS)
    case = StreamCase("requantize_unit", unit, row_beats(LANES, {"x": x}),
                      row_beats(LANES, {"q": act.codes},
                                {"scale_mantissa": act.scale_mantissa, "scale_exponent": act.scale_exponent}))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_requantize_unit_row_cycles_match_its_model(simulator, tmp_path):
    """Without stalls, a row takes `row_cycles` from its first input to its last output beat,
    and the next row starts the cycle after."""
    x = act32_rows(np.random.default_rng(21), 3, LENGTH)[:3]
    act = numerics.requantize_per_token(x)
    case = StreamCase("requantize_unit", RequantizeUnit(LANES, MAX_BEATS), row_beats(LANES, {"x": x}),
                      row_beats(LANES, {"q": act.codes},
                                {"scale_mantissa": act.scale_mantissa, "scale_exponent": act.scale_exponent}))
    run = run_stream(case, simulator, tmp_path)
    assert_beats_equal(case, run)
    beats = LENGTH // LANES
    first_in, last_out = run.in_cycles[0], run.out_cycles[beats - 1]
    assert last_out - first_in + 1 == RequantizeUnit.row_cycles(beats, LANES)
    assert run.in_cycles[beats] == last_out + 1
