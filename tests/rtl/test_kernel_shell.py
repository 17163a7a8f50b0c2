"""The XRT kernel top: emitted port names, and the copy shell run as XRT runs it, on both simulators."""

from __future__ import annotations

import re

import pytest
from amaranth.hdl import Fragment

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.placement import KERNEL_NAME
from llmfab.rtl.emit import kernel_sources, top_ports
from llmfab.rtl.kernel_shell import KernelShell, shell_register_map
from llmfab.rtl.sim_runner import missing_tool, simulate, simulator_params

PORTS, DATA_WIDTH, MAX_BURST = 2, 64, 16
TOP = KERNEL_NAME


def test_top_has_xrt_port_names():
    shell = KernelShell(PORTS, DATA_WIDTH, MAX_BURST)
    sources = kernel_sources(shell, TOP)
    header = sources.top.split("\n);\n", 1)[0]
    names = re.findall(r"(?:input|output)\s+wire\s+(?:\[\d+:0\]\s+)?(\w+)", header)
    assert names[:2] == ["ap_clk", "ap_rst_n"]
    assert {"s_axi_control_awaddr", "s_axi_control_rdata", "m_axi_hbm00_arlen", "m_axi_hbm01_wlast", "interrupt"} <= set(names)
    assert not any("__" in n for n in names)
    assert "[63:0] m_axi_hbm01_wdata" in header and "[11:0] s_axi_control_araddr" in header
    assert f"module {TOP}_core" in sources.core and sources.verilog.count("module ") > 2
    assert [p.name for p in top_ports(shell)] == names[2:]


def test_shell_for_a_config_follows_its_engine():
    config = HardwareConfig.from_preset("u280-small")
    shell = KernelShell.for_config(config)
    assert shell.ports == config.engine.hbm_ports
    assert [a.name for a in shell.register_map.arguments][-3:] == ["src_offset", "dst_offset", "beats"]
    assert shell_register_map(config.engine.hbm_ports)["hbm1"].master == "m_axi_hbm01"
    assert len(top_ports(shell)) == 19 + 1 + shell.ports * 29  # AXI4-Lite, interrupt, AXI4 masters
    Fragment.get(shell, None)  # elaborates
    with pytest.raises(ValueError, match="at least one HBM port"):
        KernelShell(0, 64, 16)


@pytest.mark.parametrize("simulator", simulator_params())
def test_kernel_shell_copies_as_xrt_drives_it(simulator):
    sources = kernel_sources(KernelShell(PORTS, DATA_WIDTH, MAX_BURST), TOP)
    result = simulate(sources.verilog, toplevel=TOP, test_module="llmfab.tests.rtl.cocotb_kernel_shell",
                      simulator=simulator, extra_env={"KERNEL_PORTS": str(PORTS), "KERNEL_MAX_BURST": str(MAX_BURST)})
    assert len(result.tests) == 3


@pytest.mark.sim
@pytest.mark.skipif(missing_tool("icarus") is not None, reason=str(missing_tool("icarus")))
def test_kernel_shell_at_the_u280_axi_width():
    """512-bit beats and 64-beat bursts, as the U280 presets use (Icarus only, to spare a Verilator build)."""
    engine = HardwareConfig.from_preset("u280-default").engine
    sources = kernel_sources(KernelShell(PORTS, engine.axi_data_width_bits, engine.axi_burst_len), TOP)
    simulate(sources.verilog, toplevel=TOP, test_module="llmfab.tests.rtl.cocotb_kernel_shell", simulator="icarus",
             extra_env={"KERNEL_PORTS": str(PORTS), "KERNEL_MAX_BURST": str(engine.axi_burst_len)})
