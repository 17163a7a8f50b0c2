"""cocotb tests of the harness design (run by test_sim_runner.py through rtl.sim_runner)."""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


async def _reset(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.rst.value = 1
    dut.valid.value = 0
    dut.clear.value = 0
    dut.value.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def accumulates_and_saturates(dut):
    """Random values: the total follows a Python model including saturation and clear."""
    width = len(dut.value)
    assert width == int(os.environ["HARNESS_WIDTH"]), "extra_env reaches the test module"
    limit = (1 << width) - 1
    rng = random.Random(1)
    await _reset(dut)
    expected = 0
    for _ in range(200):
        await FallingEdge(dut.clk)
        value, valid, clear = rng.randrange(limit + 1) // 8, rng.random() < 0.7, rng.random() < 0.05
        dut.value.value, dut.valid.value, dut.clear.value = value, int(valid), int(clear)
        await RisingEdge(dut.clk)
        await ReadOnly()
        expected = 0 if clear else min(expected + value, limit) if valid else expected
        assert int(dut.total.value) == expected
