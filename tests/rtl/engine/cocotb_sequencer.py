"""cocotb driver of tests/rtl/engine/bench_design.SequencerBench (run through llmfab.rtl.sim_runner).

$SEQ_CASES names a JSON file: `word_bytes`, `max_cycles` and `cases`, each with `loads`
([buf, byte address, hex bytes]: written through the backdoor before the instruction), `inst`
(the 256-bit word), `rows`, `regs` (the packed registers) and `reads` ([buf, byte address,
bytes]: read back after `done`). The test writes $SEQ_RESULTS: per case the cycles from `start`
to `done`, `error`, the buffer fault flag and the hex bytes read. The pytest side compares.
"""

from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


async def _edge(dut):
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)


async def backdoor_write(dut, w: int, buf: int, addr: int, payload: bytes) -> None:
    first, end = addr // w, (addr + len(payload) + w - 1) // w
    for word in range(first, end):
        lo = word * w
        chunk = bytearray(w)
        mask = 0
        for k in range(w):
            at = lo + k - addr
            if 0 <= at < len(payload):
                chunk[k] = payload[at]
                mask |= 1 << k
        dut.bd_write__buf.value = buf
        dut.bd_write__addr.value = word
        dut.bd_write__data.value = int.from_bytes(chunk, "little")
        dut.bd_write__en.value = mask
        await _edge(dut)
    dut.bd_write__en.value = 0


async def backdoor_read(dut, w: int, buf: int, addr: int, nbytes: int) -> bytes:
    first, end = addr // w, (addr + nbytes + w - 1) // w
    raw = bytearray()
    for word in range(first, end):
        dut.bd_read__buf.value = buf
        dut.bd_read__addr.value = word
        dut.bd_read__en.value = 1
        await _edge(dut)
        dut.bd_read__en.value = 0
        await ReadOnly()
        raw += int(dut.bd_read__data.value.to_unsigned()).to_bytes(w, "little")
        await FallingEdge(dut.clk)
    skip = addr - first * w
    return bytes(raw[skip:skip + nbytes])


@cocotb.test()
async def run_cases(dut):
    with open(os.environ["SEQ_CASES"]) as handle:
        setup = json.load(handle)
    w = setup["word_bytes"]
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.start.value = 0
    dut.bd_write__en.value = 0
    dut.bd_read__en.value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for case in setup["cases"]:
        for buf, addr, payload in case["loads"]:
            await backdoor_write(dut, w, buf, addr, bytes.fromhex(payload))
        dut.inst.value = case["inst"]
        dut.rows.value = case["rows"]
        dut.regs.value = case["regs"]
        dut.start.value = 1
        await _edge(dut)
        dut.start.value = 0
        cycles, error = None, 0
        for cycle in range(1, setup["max_cycles"] + 1):
            await ReadOnly()
            if dut.done.value == 1:
                cycles, error = cycle, int(dut.error.value)
                await FallingEdge(dut.clk)
                break
            await _edge(dut)
        reads = []
        if cycles is not None:
            await _edge(dut)  # the last write lands
            for buf, addr, nbytes in case["reads"]:
                reads.append((await backdoor_read(dut, w, buf, addr, nbytes)).hex())
        await ReadOnly()
        results.append({"cycles": cycles, "error": error, "fault": int(dut.fault.value), "reads": reads})
        await FallingEdge(dut.clk)
        if cycles is None:
            break
    with open(os.environ["SEQ_RESULTS"], "w") as handle:
        json.dump(results, handle)
