"""cocotb driver of the whole engine (rtl/engine/engine.Engine), run as XRT runs the kernel.

$ENGINE_SETUP names a JSON file written by tests/rtl/engine/engine_harness.py:

- `separator`, `clock`, `reset`, `reset_active_low`: the port naming (Amaranth core or XRT top);
- `memories`: per HBM port `size`, `fill` (hex seed of the background pattern), `loads`
  ([byte address, file] copied in before the first run: the pseudo-channel image at the port's
  pointer; port 0 also gets the instruction words at the instruction pointer);
- `registers`: argument and status register offsets; `pointers`: argument name -> value;
- `runs`: per run the scalar arguments, optional `tokens` with their `input` location, and
  `dumps` ([port, byte address, bytes, file]: memory read back after the run);
- `stall`, `max_cycles`, `trace` (the core has trace ports), `results` (JSON written here).

Per run the results hold the status registers, the cycles between ap_start and ap_done, and
(with trace) every retired instruction: unit, address, opcode, ready/start/end cycles.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, ValueChange, with_timeout

from llmfab.rtl.axi_models import AxiLiteHost, AxiMemory
from llmfab.rtl.control import CTRL_AP_DONE, CTRL_AP_START, CTRL_OFFSET, GIE_OFFSET, IER_OFFSET, IRQ_DONE, ISR_OFFSET

UNITS = ("load", "compute", "store")
CLOCK_NS = 4


def background(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def watch_unit(dut, sep: str, unit: str, log: list) -> None:
    prefix = f"trace{sep}{unit}{sep}"
    retired = getattr(dut, prefix + "retired")
    while True:
        await ValueChange(retired)
        await ReadOnly()
        log.append({"unit": unit, "addr": int(getattr(dut, prefix + "last_addr").value),
                    "opcode": int(getattr(dut, prefix + "last_opcode").value),
                    "ready": int(getattr(dut, prefix + "last_ready").value),
                    "start": int(getattr(dut, prefix + "last_start").value),
                    "end": int(getattr(dut, prefix + "last_end").value)})


@cocotb.test()
async def run_program(dut):
    with open(os.environ["ENGINE_SETUP"]) as handle:
        setup = json.load(handle)
    sep = setup["separator"]
    clk = getattr(dut, setup["clock"])
    reset = getattr(dut, setup["reset"])
    cocotb.start_soon(Clock(clk, CLOCK_NS, unit="ns").start())
    reset.value = 0 if setup["reset_active_low"] else 1
    host = AxiLiteHost(dut, "s_axi_control", clk, separator=sep)
    memories = []
    for p, spec in enumerate(setup["memories"]):
        memory = AxiMemory(dut, f"m_axi_hbm{p:02d}", clk, spec["size"], data_width=setup["data_width"],
                           stall=setup["stall"], seed=17 + p, separator=sep)
        memory.write_bytes(0, background(spec["size"], spec["fill"]))
        for addr, path in spec["loads"]:
            with open(path, "rb") as handle:
                memory.write_bytes(addr, handle.read())
        memories.append(memory)
    await ClockCycles(clk, 8)
    await FallingEdge(clk)
    reset.value = 1 if setup["reset_active_low"] else 0
    await ClockCycles(clk, 2)
    regs = setup["registers"]

    async def write_argument(name: str, value: int) -> None:
        offset, size = regs[name]
        for w in range(size // 4):
            await host.write(offset + 4 * w, (value >> (32 * w)) & 0xFFFFFFFF)

    await host.write(GIE_OFFSET, 1)
    await host.write(IER_OFFSET, IRQ_DONE)
    for name, value in setup["pointers"].items():
        await write_argument(name, value)
    trace: list = []
    if setup["trace"]:
        for unit in UNITS:
            cocotb.start_soon(watch_unit(dut, sep, unit, trace))

    results = []
    for run in setup["runs"]:
        if run.get("tokens") is not None:
            where = run["input"]
            payload = b"".join(int(t).to_bytes(4, "little", signed=True) for t in run["tokens"])
            memories[where["port"]].write_bytes(where["addr"], payload)
        for name, value in run["arguments"].items():
            await write_argument(name, value)
        del trace[:]
        await host.write(CTRL_OFFSET, CTRL_AP_START)
        start = cocotb.utils.get_sim_time("ns")
        await with_timeout(RisingEdge(dut.interrupt), setup["max_cycles"] * CLOCK_NS, "ns")
        cycles = int((cocotb.utils.get_sim_time("ns") - start) // CLOCK_NS)
        await FallingEdge(clk)
        control = await host.read(CTRL_OFFSET)
        assert control & CTRL_AP_DONE, f"interrupt without ap_done (control 0x{control:x})"
        await host.write(ISR_OFFSET, IRQ_DONE)
        status = {name: await host.read(regs[name][0]) for name in setup["status"]}
        for port, addr, nbytes, path in run["dumps"]:
            with open(path, "wb") as handle:
                handle.write(memories[port].read_bytes(addr, nbytes))
        results.append({"status": status, "cycles": cycles, "trace": sorted(trace, key=lambda t: t["addr"])})
    for memory in memories:
        memory.check()
    with open(setup["results"], "w") as handle:
        json.dump(results, handle)
