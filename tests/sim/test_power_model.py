"""Power model: hand-computed terms, linearity in activity, sources for every constant."""

from __future__ import annotations

import pytest

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.errors import InputError
from llmfab.sim.power_model import DEFAULT_CONSTANTS, Activity, PowerConstants, estimate_power


@pytest.fixture(scope="module")
def config():
    return HardwareConfig.from_preset("u280-default")


def test_every_constant_has_a_source():
    names = [f for f in vars(DEFAULT_CONSTANTS) if f != "sources"]
    assert sorted(DEFAULT_CONSTANTS.sources) == sorted(names)


def test_idle_run_draws_static_power_and_clock_only(config):
    cycles = config.clock_hz  # one second
    estimate = estimate_power(config, Activity(cycles=cycles, hbm_bytes=0, busy_cycles={}))
    assert estimate.seconds == pytest.approx(1.0)
    assert estimate.static_w == DEFAULT_CONSTANTS.device_static_w + DEFAULT_CONSTANTS.card_idle_w
    assert estimate.dynamic_w["hbm"] == 0 and estimate.dynamic_w["decode"] == 0
    ffs = config.estimate_resources().total.ffs
    assert estimate.dynamic_w["clock"] == pytest.approx(ffs * DEFAULT_CONSTANTS.ff_clock_pj_per_cycle * 1e-12 * cycles)
    assert estimate.energy_j == pytest.approx(estimate.total_w * 1.0)


def test_hbm_energy_is_bits_times_energy_per_bit(config):
    constants = PowerConstants().with_changes(hbm_dram_pj_per_bit=4.0, hbm_controller_pj_per_bit=1.0,
                                              sram_pj_per_byte=0.0)
    one = estimate_power(config, Activity(cycles=1000, hbm_bytes=1e6, busy_cycles={}), constants)
    two = estimate_power(config, Activity(cycles=1000, hbm_bytes=2e6, busy_cycles={}), constants)
    hbm_joules = one.dynamic_w["hbm"] * one.seconds
    assert hbm_joules == pytest.approx(1e6 * 8 * 5.0e-12)
    assert two.energy_j - one.energy_j == pytest.approx(hbm_joules)
    assert constants.sources["hbm_dram_pj_per_bit"] == "user override"


def test_busy_units_add_energy_and_tokens_per_joule_follow(config):
    idle = estimate_power(config, Activity(cycles=1e6, hbm_bytes=0, busy_cycles={}))
    busy = estimate_power(config, Activity(cycles=1e6, hbm_bytes=0, busy_cycles={Mode.DECODE: 1e6}))
    lanes = config.estimate_resources().component("decode_lanes")
    assert busy.energy_j - idle.energy_j == pytest.approx(1e6 * lanes.luts * DEFAULT_CONSTANTS.lut_pj_per_active_cycle * 1e-12)
    assert busy.tokens_per_joule(10) == pytest.approx(10 / busy.energy_j)
    assert busy.tokens_per_joule(10) < idle.tokens_per_joule(10)


def test_bad_inputs():
    with pytest.raises(InputError, match="unknown power constant"):
        PowerConstants().with_changes(flux_capacitor_w=1.21)
    with pytest.raises(ValueError):
        Activity(cycles=-1, hbm_bytes=0, busy_cycles={})
