"""A cocotb module with one passing and one failing test: the harness must report the failure."""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles


@cocotb.test()
async def passes(dut):
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    await ClockCycles(dut.clk, 2)


@cocotb.test()
async def total_is_wrong_on_purpose(dut):
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    assert int(dut.total.value) == 1, "deliberate failure: the total is 0 after reset"
