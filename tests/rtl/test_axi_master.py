"""The AXI4 burst master: burst planning, and cocotb tests against the AXI memory model."""

from __future__ import annotations

import pytest
from amaranth.hdl import Fragment

from llmfab.boards.hardware import HardwareConfig
from llmfab.rtl.axi_master import AxiMaster, plan_bursts
from llmfab.rtl.sim_runner import simulate, simulator_params

DATA_WIDTH, MAX_BURST = 64, 16


def test_bursts_stop_at_the_burst_limit_and_at_4k_pages():
    assert plan_bursts(0, 40, 64, 16) == [(0, 16), (1024, 16), (2048, 8)]
    assert plan_bursts(4096 - 128, 5, 64, 64) == [(4096 - 128, 2), (4096, 3)]
    assert plan_bursts(0, 0, 64, 64) == []
    assert plan_bursts(100, 1, 64, 64) == [(64, 1)], "low address bits are dropped"
    for addr, beats in [(4096 * 3 - 64, 300), (64 * 7, 1000)]:
        bursts = plan_bursts(addr, beats, 64, 64)
        assert sum(n for _, n in bursts) == beats
        assert all(a // 4096 == (a + n * 64 - 1) // 4096 and n <= 64 for a, n in bursts)


def test_master_rejects_bursts_the_protocol_forbids():
    with pytest.raises(ValueError, match="outside 1..256"):
        AxiMaster(64, 257)
    with pytest.raises(ValueError, match="4096-byte"):
        AxiMaster(512, 128)


def test_master_for_a_hardware_config_uses_its_width_and_burst():
    config = HardwareConfig.from_preset("u280-small")
    master = AxiMaster.for_config(config)
    assert master.data_width == config.engine.axi_data_width_bits
    assert master.max_burst_beats == config.engine.axi_burst_len
    assert len(master.axi.wdata) == config.engine.axi_data_width_bits
    Fragment.get(master, None)  # elaborates at this width


@pytest.mark.parametrize("simulator", simulator_params())
def test_axi_master(simulator):
    result = simulate(AxiMaster(DATA_WIDTH, MAX_BURST), toplevel="axi_master",
                      test_module="llmfab.tests.rtl.cocotb_axi_master", simulator=simulator,
                      extra_env={"AXI_MAX_BURST": str(MAX_BURST)})
    assert len(result.tests) == 5
