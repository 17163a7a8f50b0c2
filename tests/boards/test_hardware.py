"""HardwareConfig: presets, derived throughput, resource fit, round trip and fingerprint."""

import json
import math

import pytest

from llmfab.boards.board import load_board
from llmfab.boards.hardware import (
    EngineDoesNotFitError,
    EngineParams,
    HardwareConfig,
    HardwareConfigError,
    Mode,
    available_presets,
    decode_lanes_for_stream,
    engine_preset,
)


@pytest.fixture(scope="module")
def u280_config():
    return HardwareConfig.from_preset("u280-default")


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_fits_its_board(preset):
    HardwareConfig.from_preset(preset).check_fits()


def test_default_preset_streams_full_hbm_bandwidth(u280_config):
    assert u280_config.board.name == "u280"
    assert u280_config.engine.hbm_ports == 32
    # 460 GB/s at 225 MHz is ~2044 bytes per cycle; 32 x 512-bit ports offer 2048.
    assert math.isclose(u280_config.peak_hbm_bytes_per_s, 460e9, rel_tol=1e-9)
    assert u280_config.peak_hbm_bytes_per_cycle <= 32 * 64


def test_decode_lanes_are_sized_to_the_stream(u280_config):
    e = u280_config.engine
    assert e.decode_lanes == decode_lanes_for_stream(e.hbm_ports, e.axi_data_width_bits, e.decode_weight_bits)


def test_ops_per_cycle_per_mode(u280_config):
    e = u280_config.engine
    assert u280_config.ops_per_cycle(Mode.PREFILL) == 2 * e.prefill_rows * e.prefill_cols
    assert u280_config.ops_per_cycle(Mode.DECODE) == 2 * e.decode_lanes
    assert u280_config.ops_per_cycle(Mode.SPECIAL) == e.sfu_lanes
    assert u280_config.peak_ops_per_s("attention") == 2 * e.attention_lanes * 225e6


def test_port_bandwidth_capped_by_pseudo_channel():
    narrow_clock = HardwareConfig(load_board("u280"), engine_preset("u280-default").replace(clock_mhz=450.0))
    assert narrow_clock.hbm_port_bytes_per_cycle < 64  # 14.375 GB/s / 450 MHz ~ 32 bytes


def test_resource_estimate_breakdown_adds_up(u280_config):
    est = u280_config.estimate_resources()
    assert est.total.dsps == sum(r.dsps for _, r in est.breakdown)
    assert est.component("decode_lanes").dsps == 0  # decode is LUT-only


def test_round_trip_through_json(u280_config):
    text = json.dumps(u280_config.to_dict())
    again = HardwareConfig.from_dict(json.loads(text))
    assert again == u280_config
    assert again.fingerprint() == u280_config.fingerprint()


def test_fingerprint_is_stable_and_hex(u280_config):
    fp = u280_config.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert HardwareConfig.from_preset("u280-default").fingerprint() == fp


def test_fingerprint_changes_with_any_parameter(u280_config):
    base = u280_config.fingerprint()
    changed = HardwareConfig(u280_config.board, u280_config.engine.replace(kv_buffer_bytes=8 * 2**20))
    assert changed.fingerprint() != base
    other_board = HardwareConfig.from_preset("u280-default", board="u55c")
    assert other_board.fingerprint() != base


def test_fingerprint_ignores_citations_but_not_int_float_spelling(u280_config):
    data = u280_config.to_dict()
    data["board"]["hbm"]["sources"]["stacks"] = "another citation"
    assert HardwareConfig.from_dict(data).fingerprint() == u280_config.fingerprint()
    as_int = HardwareConfig(u280_config.board, u280_config.engine.replace(clock_mhz=225))
    assert as_int.fingerprint() == u280_config.fingerprint()


def test_check_fits_rejects_oversized_engine(u280_config):
    huge = u280_config.engine.replace(prefill_rows=128, prefill_cols=256)  # 16,384 DSPs
    with pytest.raises(EngineDoesNotFitError, match=r"does not fit board 'u280'.*dsps: needs"):
        HardwareConfig(u280_config.board, huge).check_fits()


def test_check_fits_rejects_more_ports_than_pseudo_channels(u280_config):
    too_many = u280_config.engine.replace(hbm_ports=33)
    with pytest.raises(EngineDoesNotFitError, match=r"33 HBM ports but the board has 32 pseudo-channels"):
        HardwareConfig(u280_config.board, too_many).check_fits()


def test_check_fits_rejects_clock_above_board_range(u280_config):
    fast = u280_config.engine.replace(clock_mhz=500.0)
    with pytest.raises(EngineDoesNotFitError, match=r"clock 500 MHz"):
        HardwareConfig(u280_config.board, fast).check_fits()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"decode_lanes": 0}, "'decode_lanes': expected a positive value"),
        ({"prefill_rows": 2.5}, "'prefill_rows': expected an integer"),
        ({"axi_data_width_bits": 384}, "not an AXI width"),
        ({"axi_burst_len": 128}, "at most 256 beats and 4096 bytes"),
    ],
)
def test_invalid_engine_parameters(change, message):
    with pytest.raises(HardwareConfigError, match=message):
        engine_preset("u280-default").replace(**change)


def test_engine_from_dict_reports_missing_and_unknown():
    data = engine_preset("u280-default").to_dict()
    del data["clock_mhz"]
    data["clock_ghz"] = 0.225
    with pytest.raises(HardwareConfigError, match=r"missing \['clock_mhz'\], unknown \['clock_ghz'\]"):
        EngineParams.from_dict(data)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(HardwareConfigError, match=r"unknown engine preset 'u281'.*u280-default"):
        HardwareConfig.from_preset("u281")


def test_from_dict_rejects_foreign_data():
    with pytest.raises(HardwareConfigError, match="not a hardware config"):
        HardwareConfig.from_dict({"format": "something else"})
