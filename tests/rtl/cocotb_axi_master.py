"""cocotb tests of the AXI4 burst master (rtl/axi_master.py) against the AXI memory model.

Settings from the environment (set by test_axi_master.py): AXI_MAX_BURST (the master's
max_burst_beats). The data width is read from the design.
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from llmfab.rtl.axi_master import TransferCommand, plan_bursts
from llmfab.rtl.axi_models import AxiMemory, StreamSink, StreamSource, pack

MEMORY_BYTES = 64 * 1024
MAX_CYCLES = 20000


class Bench:
    def __init__(self, dut, *, stall: float, seed: int, error_ranges=()):
        self.dut = dut
        self.width = len(dut.axi__wdata)
        self.beat_bytes = self.width // 8
        self.max_burst = int(os.environ["AXI_MAX_BURST"])
        self.rng = random.Random(seed)
        self.memory = AxiMemory(dut, "axi", dut.clk, MEMORY_BYTES, data_width=self.width, stall=stall,
                                seed=seed + 1, error_ranges=error_ranges)
        self.read_cmd = StreamSource(dut, "read_cmd", dut.clk, stall=stall, seed=seed + 2)
        self.write_cmd = StreamSource(dut, "write_cmd", dut.clk, stall=stall, seed=seed + 3)
        self.write_data = StreamSource(dut, "write_data", dut.clk, stall=stall, seed=seed + 4)
        self.read_data = StreamSink(dut, "read_data", dut.clk, stall=stall, seed=seed + 5)

    def random_transfer(self, max_beats: int) -> tuple[int, int]:
        """A beat-aligned (addr, beats) inside memory, often near a 4 KiB boundary."""
        beats = self.rng.randrange(0, max_beats + 1)
        if self.rng.random() < 0.5:  # start just below a page boundary
            page = self.rng.randrange(1, MEMORY_BYTES // 4096)
            addr = page * 4096 - self.beat_bytes * self.rng.randrange(1, 8)
        else:
            addr = self.rng.randrange(0, MEMORY_BYTES // self.beat_bytes) * self.beat_bytes
        beats = min(beats, (MEMORY_BYTES - addr) // self.beat_bytes)
        return addr, beats

    def beat(self, addr: int) -> int:
        return int.from_bytes(self.memory.read_bytes(addr, self.beat_bytes), "little")

    async def wait_idle(self, what: str) -> None:
        for _ in range(MAX_CYCLES):
            await FallingEdge(self.dut.clk)
            await ReadOnly()
            if (self.read_cmd.idle and self.write_cmd.idle and self.write_data.idle
                    and self.dut.read_idle.value and self.dut.write_idle.value):
                return
        raise TimeoutError(f"{what}: master not idle after {MAX_CYCLES} cycles")


async def _reset(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.rst.value = 1
    dut.clear_error.value = 0
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def _reads(dut, stall: float, seed: int) -> None:
    await _reset(dut)
    bench = Bench(dut, stall=stall, seed=seed)
    bench.memory.write_bytes(0, bytes(bench.rng.getrandbits(8) for _ in range(MEMORY_BYTES)))
    transfers = [bench.random_transfer(3 * bench.max_burst) for _ in range(12)] + [(4096 - bench.beat_bytes, 2)]
    expected, bursts = [], []
    for addr, beats in transfers:
        bench.read_cmd.send(pack(TransferCommand, addr=addr, beats=beats))
        expected += [bench.beat(addr + i * bench.beat_bytes) for i in range(beats)]
        bursts += plan_bursts(addr, beats, bench.beat_bytes, bench.max_burst)
    await bench.wait_idle("reads")
    assert bench.read_data.received == expected
    assert [(b.addr, b.beats) for b in bench.memory.bursts] == bursts
    assert any(b.beats == bench.max_burst for b in bench.memory.bursts), "a full-length burst was exercised"
    bench.memory.check()
    assert dut.error.value == 0


@cocotb.test()
async def reads_without_stalls(dut):
    """Back-to-back read transfers at full rate: data in address order, bursts as planned."""
    await _reads(dut, stall=0.0, seed=11)


@cocotb.test()
async def reads_with_random_stalls(dut):
    await _reads(dut, stall=0.4, seed=12)


@cocotb.test()
async def writes_with_random_stalls(dut):
    """Write transfers land in memory byte for byte; write_idle waits for every response."""
    await _reset(dut)
    bench = Bench(dut, stall=0.3, seed=21)
    reference = bytearray(MEMORY_BYTES)
    bursts = []
    for addr, beats in [bench.random_transfer(3 * bench.max_burst) for _ in range(10)]:
        bench.write_cmd.send(pack(TransferCommand, addr=addr, beats=beats))
        for i in range(beats):
            value = bench.rng.getrandbits(bench.width)
            bench.write_data.send(value)
            at = addr + i * bench.beat_bytes
            reference[at:at + bench.beat_bytes] = value.to_bytes(bench.beat_bytes, "little")
        bursts += plan_bursts(addr, beats, bench.beat_bytes, bench.max_burst)
    await bench.wait_idle("writes")
    assert bench.memory.mem == reference
    assert [(b.addr, b.beats) for b in bench.memory.bursts] == bursts
    assert not bench.memory._responses, "write_idle rose before every write response was taken"
    bench.memory.check()


@cocotb.test()
async def reads_and_writes_together(dut):
    """Copy one region to another through the testbench while both engines run."""
    await _reset(dut)
    bench = Bench(dut, stall=0.2, seed=31)
    source = bytes(bench.rng.getrandbits(8) for _ in range(8192))
    bench.memory.write_bytes(0, source)
    beats = 8192 // bench.beat_bytes // 2
    bench.read_cmd.send(pack(TransferCommand, addr=0, beats=beats))
    await bench.wait_idle("read half")
    bench.write_cmd.send(pack(TransferCommand, addr=32768, beats=beats))
    bench.read_cmd.send(pack(TransferCommand, addr=beats * bench.beat_bytes, beats=beats))
    bench.write_data.send(*bench.read_data.received)
    await bench.wait_idle("read and write")
    assert bench.memory.read_bytes(32768, beats * bench.beat_bytes) == source[:beats * bench.beat_bytes]
    got = b"".join(v.to_bytes(bench.beat_bytes, "little") for v in bench.read_data.received)
    assert got == source
    bench.memory.check()


@cocotb.test()
async def error_response_sets_sticky_error(dut):
    await _reset(dut)
    bench = Bench(dut, stall=0.0, seed=41, error_ranges=((8192, 8192 + 64),))
    bench.read_cmd.send(pack(TransferCommand, addr=0, beats=4))
    await bench.wait_idle("good read")
    assert dut.error.value == 0
    bench.read_cmd.send(pack(TransferCommand, addr=8192, beats=1))
    await bench.wait_idle("bad read")
    assert dut.error.value == 1
    await FallingEdge(dut.clk)
    dut.clear_error.value = 1
    await FallingEdge(dut.clk)
    dut.clear_error.value = 0
    await ReadOnly()
    assert dut.error.value == 0
    bench.write_cmd.send(pack(TransferCommand, addr=8192, beats=2))
    bench.write_data.send(1, 2)
    await bench.wait_idle("bad write")
    assert dut.error.value == 1
