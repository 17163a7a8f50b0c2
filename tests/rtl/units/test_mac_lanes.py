"""The grouped MAC unit against llmfab.sim.numerics.linear on both simulators (§4, §5.2):
dense and 2:4 weights, 2/4/8-bit codes, half-integer zero points, saturating outputs."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from llmfab.rtl.sim_runner import simulator_params
from llmfab.rtl.units.mac_lanes import MacLanesUnit, group_accumulator_bits
from llmfab.sim import numerics
from llmfab.tests.rtl.units.streams import StreamCase, assert_beats_equal, run_stream
from llmfab.tests.rtl.units.vectors import act32_rows

IN_FEATURES = 32
OUT_FEATURES = 6

CONFIGS = {  # name: (lanes, bits, group_size, sparse, doubled)
    "w2_2to4": (8, 2, 16, True, False),
    "w4_half_zeros": (4, 4, 8, False, True),
    "w8": (4, 8, 32, False, False),
}


def _weight(rng, bits: int, group_size: int, sparse: bool, doubled: bool):
    kept = IN_FEATURES // 2 if sparse else IN_FEATURES
    codes = rng.integers(0, 1 << bits, (OUT_FEATURES, kept))
    groups = IN_FEATURES // group_size
    zeros = rng.integers(0, (1 << (bits + 1)) - 1 if doubled else 1 << bits, (OUT_FEATURES, groups))
    scales = (rng.random((OUT_FEATURES, groups)) * 2.0 ** rng.integers(-12, 0, (OUT_FEATURES, 1))).astype(np.float16)
    scales[0, 0] = 0  # a zero scale gives M = 0
    patterns = rng.integers(0, 6, (OUT_FEATURES, IN_FEATURES // 4)) if sparse else None
    weight = numerics.prepare_weight(codes, scales.astype(np.float64), zeros, group_size, patterns, zero_halves=doubled)
    return weight, codes, zeros, patterns


def _beats(act, weight, codes, zeros, patterns, lanes: int, sparse: bool) -> list[dict]:
    """Every (token, output row) pair as one row of beats, in token-major order."""
    group = weight.group_size
    beats = []
    for t in range(act.codes.shape[0]):
        for o in range(weight.shape[0]):
            for b in range(IN_FEATURES // lanes):
                lo = b * lanes
                kept = slice(lo // 2, (lo + lanes) // 2) if sparse else slice(lo, lo + lanes)
                beat = {"a": act.codes[t, lo:lo + lanes].tolist(), "c": codes[o, kept].tolist(),
                        "zero": int(zeros[o, lo // group]), "scale": int(weight.scale_mantissa[o, lo // group]),
                        "group_last": int((lo + lanes) % group == 0), "row_shift": int(weight.row_shift[o]),
                        "act_mantissa": int(act.scale_mantissa[t]), "act_exponent": int(act.scale_exponent[t]),
                        "last": int(lo + lanes == IN_FEATURES)}
                if sparse:
                    beat["pattern"] = patterns[o, lo // 4:(lo + lanes) // 4].tolist()
                beats.append(beat)
    return beats


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("simulator", simulator_params())
def test_mac_lanes_unit_matches_linear(simulator, config, tmp_path):
    lanes, bits, group_size, sparse, doubled = CONFIGS[config]
    rng = np.random.default_rng(50 + bits)
    x = act32_rows(rng, 8, IN_FEATURES)
    x[1] = 0
    x[2, :] = 127 * (1 << 20)  # every code at +127: the largest group sums
    act = numerics.requantize_per_token(x)
    weight, codes, zeros, patterns = _weight(rng, bits, group_size, sparse, doubled)
    expected = numerics.linear(act, weight)
    assert np.any(np.abs(expected) == 2 ** 31 - 1) or np.any(expected == -2 ** 31) or bits != 8, \
        "the W8 case should reach saturation"
    unit = MacLanesUnit(lanes, bits, group_size, sparse=sparse, doubled=doubled)
    case = StreamCase(f"mac_{config}", unit, _beats(act, weight, codes, zeros, patterns, lanes, sparse),
                      [{"y": int(v)} for v in expected.ravel()])
    run = run_stream(case, simulator, tmp_path, valid_probability=0.85, ready_probability=0.5)
    assert_beats_equal(case, run)


@pytest.mark.parametrize("simulator", simulator_params())
def test_mac_lanes_unit_streams_rows_back_to_back(simulator, tmp_path):
    """Without stalls, one beat per cycle: row k's output leaves `latency` cycles after its last
    beat and rows follow each other with no bubble."""
    lanes, bits, group_size, sparse, doubled = CONFIGS["w4_half_zeros"]
    rng = np.random.default_rng(60)
    act = numerics.requantize_per_token(act32_rows(rng, 2, IN_FEATURES)[:2])
    weight, codes, zeros, patterns = _weight(rng, bits, group_size, sparse, doubled)
    unit = MacLanesUnit(lanes, bits, group_size, sparse=sparse, doubled=doubled)
    case = StreamCase("mac_w4_half_zeros", unit, _beats(act, weight, codes, zeros, patterns, lanes, sparse),
                      [{"y": int(v)} for v in numerics.linear(act, weight).ravel()])
    run = run_stream(case, simulator, tmp_path)
    assert_beats_equal(case, run)
    beats = IN_FEATURES // lanes
    assert np.all(np.diff(run.in_cycles) == 1)
    last_beats = np.array(run.in_cycles)[beats - 1::beats]
    assert np.all(np.array(run.out_cycles) - last_beats == MacLanesUnit.latency(lanes, sparse))


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # the rejected unit is never elaborated
def test_group_accumulator_width_follows_the_spec_formula():
    assert group_accumulator_bits(64, 2, False) == 16  # W2 g64: 24,384 (§4.3)
    assert group_accumulator_bits(128, 4, False) == 19  # W4 g128: 243,840
    with pytest.raises(ValueError, match="multiple of the lane count") as rejected:
        MacLanesUnit(8, 2, 12)
    del rejected  # collect the half-built unit here, where its "unused" warning is filtered
    gc.collect()
