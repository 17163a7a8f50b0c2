"""Per-token requantization, KV4 quantization and RMSNorm units against llmfab.sim.numerics on
both simulators (docs/numerics.md §3, §6.3, §6.4)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.kv_quant import KvDequantizeUnit, KvQuantizeUnit
from llmfab.rtl.units.requantize import RequantizeUnit
from llmfab.rtl.units.rmsnorm import RmsNormUnit
from llmfab.sim import numerics
from llmfab.tests.rtl.units.rows import row_beats
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, lane_beats, run_stream
from llmfab.tests.rtl.units.vectors import act32_rows, act32_values

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


def _kv_rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = act32_rows(rng, 40, LENGTH)
    offset = rng.integers(-(1 << 20), 1 << 20, (10, 1))
    narrow = rng.integers(-8, 8, (10, LENGTH)) + offset  # spans below 15 (scale 1) and tiny ranges
    return np.concatenate([rows, narrow])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("simulator", simulator_params())
def test_kv_quantize_unit_matches_numerics(simulator, bits, tmp_path):
    x = _kv_rows(22 + bits)
    block = numerics.kv4_quantize(x, axis=-1, bits=bits)
    case = StreamCase(f"kv{bits}_quantize_unit", KvQuantizeUnit(LANES, MAX_BEATS, bits), row_beats(LANES, {"x": x}),
                      row_beats(LANES, {"code": block.codes}, {"scale": block.scale[:, 0], "offset": block.offset[:, 0]}))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_kv_dequantize_unit_matches_numerics(simulator, tmp_path):
    x = _kv_rows(30)
    block = numerics.kv4_quantize(x, axis=-1)
    rng = np.random.default_rng(31)
    codes = np.concatenate([block.codes.ravel(), rng.integers(0, 16, 40)])
    scale = np.concatenate([np.repeat(block.scale[:, 0], LENGTH), rng.integers(1, 1 << 29, 40)])
    offset = np.concatenate([np.repeat(block.offset[:, 0], LENGTH), act32_values(rng, 40)[:40]])
    expected = numerics.kv4_dequantize(numerics.Kv4Codes(codes, scale, offset))
    case = StreamCase("kv4_dequantize_unit", KvDequantizeUnit(LANES),
                      lane_beats(LANES, code=codes, scale=scale, offset=offset), lane_beats(LANES, x=expected))
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("gamma_scale", [1.0, 0.02])
@pytest.mark.parametrize("simulator", simulator_params())
def test_rmsnorm_unit_matches_numerics(simulator, gamma_scale, tmp_path):
    rng = np.random.default_rng(40)
    x = act32_rows(rng, 40, LENGTH)
    gamma = gamma_scale * (1 + rng.standard_normal(LENGTH))
    gamma[0] = -2.5 * gamma_scale  # the largest |gain| sets the gain shift
    norm = numerics.prepare_norm(gamma, eps=1e-5)
    gains = np.broadcast_to(norm.gain, x.shape)
    static = {"gain_shift": norm.gain_shift, "sqrt_n_mantissa": norm.sqrt_n_mantissa,
              "sqrt_n_shift": norm.sqrt_n_shift, "eps_scaled": norm.eps_scaled}
    case = StreamCase("rmsnorm_unit", RmsNormUnit(LANES, MAX_BEATS), row_beats(LANES, {"x": x, "gain": gains}),
                      row_beats(LANES, {"y": numerics.rmsnorm(x, norm)}), static=static)
    run = run_stream(case, simulator, tmp_path, valid_probability=0.8, ready_probability=0.7)
    assert_beats_equal(case, run)


TOPLEVELS = {RequantizeUnit: "requantize_unit", KvQuantizeUnit: "kv4_quantize_unit", RmsNormUnit: "rmsnorm_unit"}


@pytest.mark.parametrize("unit_class", list(TOPLEVELS))
@pytest.mark.parametrize("simulator", simulator_params())
def test_row_unit_cycles_match_row_cycles(simulator, unit_class, tmp_path):
    """Without stalls a row takes exactly `row_cycles` from its first input to its last output
    beat, and the next row's first beat enters the cycle after (the cycle model uses these)."""
    x = act32_rows(np.random.default_rng(41), 3, LENGTH)[:3]
    fields = {"x": x, "gain": np.full_like(x, 1 << 16)} if unit_class is RmsNormUnit else {"x": x}
    static = {"gain_shift": 16, "sqrt_n_mantissa": 1 << 15, "sqrt_n_shift": 13, "eps_scaled": 0} \
        if unit_class is RmsNormUnit else {}
    unit = unit_class(LANES, MAX_BEATS)
    beats = LENGTH // LANES
    case = StreamCase(TOPLEVELS[unit_class], unit, row_beats(LANES, fields),
                      [{}] * (len(x) * beats), static=static)
    run = run_stream(case, simulator, tmp_path)
    first_in, last_out = run.in_cycles[0], run.out_cycles[beats - 1]
    assert last_out - first_in + 1 == unit_class.row_cycles(beats, LANES)
    assert run.in_cycles[beats] == last_out + 1
    assert np.all(np.diff(run.out_cycles[:beats]) == 1), "one output beat per cycle within a row"
