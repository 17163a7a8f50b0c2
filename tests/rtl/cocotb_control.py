"""cocotb tests of the XRT control slave (rtl/control.py), run by test_control.py.

The host side is `AxiLiteHost`; the core side (ap_done / ap_idle / ap_ready) is driven here.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from llmfab.rtl.axi_models import AxiLiteHost
from llmfab.rtl.control import (ARGS_OFFSET, CTRL_AP_DONE, CTRL_AP_IDLE, CTRL_AP_READY, CTRL_AP_START,
                                CTRL_AUTO_RESTART, CTRL_OFFSET, GIE_OFFSET, IER_OFFSET, IRQ_DONE, IRQ_READY,
                                ISR_OFFSET, ArgumentKind, RegisterMap)


def register_map() -> RegisterMap:
    """The map the tests build the slave with: two buffers and two scalars."""
    return RegisterMap.build([("src", "m00_axi"), ("dst", "m01_axi")], ["length", "flags"])


async def _setup(dut) -> AxiLiteHost:
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.rst.value = 1
    dut.ap_done.value, dut.ap_ready.value, dut.ap_idle.value = 0, 0, 1
    host = AxiLiteHost(dut, "s_axi_control", dut.clk)
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    return host


async def _pulse(dut, name: str) -> None:
    await FallingEdge(dut.clk)
    getattr(dut, name).value = 1
    await FallingEdge(dut.clk)
    getattr(dut, name).value = 0


@cocotb.test()
async def arguments_write_and_read_back(dut):
    """Random values in every argument register, read back over AXI4-Lite and seen on the outputs."""
    host = await _setup(dut)
    rng = random.Random(7)
    values = {}
    for arg in register_map().arguments:
        value = rng.getrandbits(arg.width)
        values[arg.name] = value
        for w in range(arg.size_bytes // 4):
            assert await host.write(arg.offset + 4 * w, value >> (32 * w)) == 0
    for arg in register_map().arguments:
        words = [await host.read(arg.offset + 4 * w) for w in range(arg.size_bytes // 4)]
        assert sum(word << (32 * i) for i, word in enumerate(words)) == values[arg.name], arg.name
        await ReadOnly()
        assert int(getattr(dut, f"args__{arg.name}").value) == values[arg.name], arg.name
    # byte strobes: only bytes 0 and 2 of 'length' change
    length = register_map()["length"]
    await host.write(length.offset, 0xAABBCCDD, strobe=0b0101)
    old = values["length"]
    expected = (old & 0xFF00FF00) | 0x00BB00DD
    assert await host.read(length.offset) == expected
    assert register_map()["src"].kind is ArgumentKind.POINTER


@cocotb.test()
async def start_done_handshake_and_clear_on_read(dut):
    """ap_start holds until ap_ready; ap_done and ap_ready are sticky until the control register is read."""
    host = await _setup(dut)
    assert await host.read(CTRL_OFFSET) == CTRL_AP_IDLE
    await host.write(CTRL_OFFSET, CTRL_AP_START)
    await ReadOnly()
    assert dut.ap_start.value == 1
    await ClockCycles(dut.clk, 5)
    assert await host.read(CTRL_OFFSET) == CTRL_AP_START | CTRL_AP_IDLE  # core has not answered yet
    await FallingEdge(dut.clk)
    dut.ap_idle.value = 0
    await _pulse(dut, "ap_ready")
    await ReadOnly()
    assert dut.ap_start.value == 0, "ap_start is cleared by ap_ready without auto_restart"
    assert await host.read(CTRL_OFFSET) == CTRL_AP_READY
    assert await host.read(CTRL_OFFSET) == 0, "ap_ready clears on read"
    await _pulse(dut, "ap_done")
    await FallingEdge(dut.clk)
    dut.ap_idle.value = 1
    assert await host.read(CTRL_OFFSET) == CTRL_AP_DONE | CTRL_AP_IDLE
    assert await host.read(CTRL_OFFSET) == CTRL_AP_IDLE, "ap_done clears on read"


@cocotb.test()
async def auto_restart_keeps_ap_start(dut):
    host = await _setup(dut)
    await host.write(CTRL_OFFSET, CTRL_AP_START | CTRL_AUTO_RESTART)
    await _pulse(dut, "ap_ready")
    await ReadOnly()
    assert dut.ap_start.value == 1
    assert await host.read(CTRL_OFFSET) & (CTRL_AP_START | CTRL_AUTO_RESTART) == CTRL_AP_START | CTRL_AUTO_RESTART
    await host.write(CTRL_OFFSET, 0)  # turning auto_restart off: the next ap_ready clears ap_start
    await _pulse(dut, "ap_ready")
    await ReadOnly()
    assert dut.ap_start.value == 0


@cocotb.test()
async def interrupts_follow_gie_ier_and_isr_toggles(dut):
    host = await _setup(dut)
    await _pulse(dut, "ap_done")
    assert await host.read(ISR_OFFSET) == 0, "no ISR bit without IER"
    await host.write(IER_OFFSET, IRQ_DONE)
    await _pulse(dut, "ap_done")
    await _pulse(dut, "ap_ready")
    assert await host.read(ISR_OFFSET) == IRQ_DONE
    await ReadOnly()
    assert dut.interrupt.value == 0, "no interrupt without GIE"
    await host.write(GIE_OFFSET, 1)
    await ReadOnly()
    assert dut.interrupt.value == 1
    await host.write(ISR_OFFSET, IRQ_DONE)  # toggle-on-write clears it
    await ReadOnly()
    assert dut.interrupt.value == 0
    assert await host.read(ISR_OFFSET) == 0
    await host.write(IER_OFFSET, IRQ_DONE | IRQ_READY)
    await _pulse(dut, "ap_ready")
    assert await host.read(ISR_OFFSET) == IRQ_READY
    assert await host.read(IER_OFFSET) == IRQ_DONE | IRQ_READY
    assert await host.read(GIE_OFFSET) == 1


@cocotb.test()
async def unmapped_offsets_read_zero(dut):
    host = await _setup(dut)
    end = register_map().end
    assert end > ARGS_OFFSET
    for offset in (end, end + 4, 0xFFC):
        assert await host.write(offset, 0xFFFFFFFF) == 0
        assert await host.read(offset) == 0
