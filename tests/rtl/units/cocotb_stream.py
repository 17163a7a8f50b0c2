"""cocotb driver of one stream-in / stream-out unit (run through llmfab.rtl.sim_runner).

Settings come from the JSON file named by $STREAM_VECTORS: packed input payloads (`inputs`),
constant input ports (`static`: Verilog port -> value), the probabilities that the source
offers a beat and that the sink takes one in a cycle (`valid_probability`, `ready_probability`,
random stalls from `seed`), and a cycle limit. The test writes what it saw to $STREAM_RESULTS:
the output payloads and the cycle of every accepted input and output beat. Comparing with the
reference is left to the pytest side (tests/rtl/units/streams.py), which can name fields.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


@cocotb.test()
async def stream_through_unit(dut):
    """Drive every input beat, collect the output beats and their cycles."""
    with open(os.environ["STREAM_VECTORS"]) as handle:
        setup = json.load(handle)
    rng = random.Random(setup["seed"])
    inputs = setup["inputs"]
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    for port, value in setup["static"].items():
        getattr(dut, port).value = value
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    outputs, in_cycles, out_cycles = [], [], []
    sent = 0
    offering = False
    for cycle in range(setup["max_cycles"]):
        if sent < len(inputs) and not offering:
            offering = rng.random() < setup["valid_probability"]
        dut.i__valid.value = int(offering)
        if offering:
            dut.i__payload.value = inputs[sent]
        dut.o__ready.value = int(rng.random() < setup["ready_probability"])
        await ReadOnly()
        if offering and dut.i__ready.value == 1:
            in_cycles.append(cycle)
            sent += 1
            offering = False
        if dut.o__valid.value == 1 and dut.o__ready.value == 1:
            outputs.append(int(dut.o__payload.value.to_unsigned()))
            out_cycles.append(cycle)
        if len(outputs) == setup["expected_beats"]:
            break
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
    with open(os.environ["STREAM_RESULTS"], "w") as handle:
        json.dump({"outputs": outputs, "in_cycles": in_cycles, "out_cycles": out_cycles}, handle)
    assert sent == len(inputs), f"the unit accepted {sent} of {len(inputs)} input beats in {setup['max_cycles']} cycles"
    assert len(outputs) == setup["expected_beats"], (
        f"the unit produced {len(outputs)} of {setup['expected_beats']} output beats in {setup['max_cycles']} cycles")
