"""The requantize unit's 16-bit codes (A16, docs/numerics.md §3.1) against
llmfab.sim.numerics.requantize_per_token(bits=16), and the two-width unit (REQUANT's A8/A16
mode on one unit) in both settings, on both simulators."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.requantize import RequantizeUnit
from llmfab.sim import numerics
from llmfab.tests.rtl.units.rows import row_beats
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, run_stream
from llmfab.tests.rtl.units.vectors import act32_rows

LANES = 4
LENGTH = 16
MAX_BEATS = 8


def _case(toplevel: str, unit: RequantizeUnit, bits: int, seed: int, static: dict) -> StreamCase:
    x = act32_rows(np.random.default_rng(seed), 40, LENGTH)
    act = numerics.requantize_per_token(x, bits)
    return StreamCase(toplevel, unit, row_beats(LANES, {"x": x}),
                      row_beats(LANES, {"q": act.codes},
                                {"scale_mantissa": act.scale_mantissa, "scale_exponent": act.scale_exponent}),
                      static=static)


@pytest.mark.parametrize("simulator", simulator_params())
def test_requantize_unit_16_bit_codes_match_numerics(simulator, tmp_path):
    case = _case("requantize16_unit", RequantizeUnit(LANES, MAX_BEATS, widths=(16,)), 16, 50, {})
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("simulator", simulator_params())
def test_two_width_requantize_unit_matches_numerics(simulator, bits, tmp_path):
    unit = RequantizeUnit(LANES, MAX_BEATS, widths=(8, 16))
    case = _case("requantize8_16_unit", unit, bits, 51 + bits, {"wide": int(bits == 16)})
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # the rejected unit is never elaborated
def test_code_widths_are_checked():
    with pytest.raises(ValueError, match="code widths") as rejected:
        RequantizeUnit(LANES, MAX_BEATS, widths=(4,))
    del rejected  # collect the half-built unit here, where its "unused" warning is filtered
    gc.collect()
