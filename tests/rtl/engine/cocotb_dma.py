"""cocotb tests of one port's DMA (tests/rtl/engine/dma_design.DmaBench): LOAD and STORE rows at random
alignments against a byte-level model of the emulator's copy, instruction fetches sharing the read
channel, and the cycles of aligned row runs.

Settings from the environment: DMA_STALL (random READY/VALID gaps of the memory and the streams),
DMA_SEED, DMA_TIMING (a JSON file the timing test writes its measurements to).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from llmfab.compiler.isa import Buffer
from llmfab.rtl.axi_master import TransferCommand
from llmfab.rtl.axi_models import AxiMemory, StreamSink, StreamSource, pack
from llmfab.rtl.engine.dma import RowRequest
from llmfab.tests.rtl.engine.cocotb_sequencer import backdoor_read, backdoor_write

MEMORY_BYTES = 32 * 1024
BUFFERS = (int(Buffer.WGT), int(Buffer.ACT), int(Buffer.KV), int(Buffer.OUT))


class Bench:
    def __init__(self, dut, stall: float, seed: int, read_latency: int = 2):
        self.dut = dut
        self.rng = random.Random(seed)
        self.beat = len(dut.axi__wdata) // 8
        self.word = len(dut.bd_write__data) // 8
        self.memory = AxiMemory(dut, "axi", dut.clk, MEMORY_BYTES, data_width=8 * self.beat, stall=stall,
                                seed=seed + 1, read_latency=read_latency)
        self.memory.write_bytes(0, self.rng.randbytes(MEMORY_BYTES))
        self.loads = StreamSource(dut, "load_req", dut.clk, stall=stall, seed=seed + 2)
        self.stores = StreamSource(dut, "store_req", dut.clk, stall=stall, seed=seed + 3)
        self.fetches = StreamSource(dut, "fetch_cmd", dut.clk, stall=stall, seed=seed + 4)
        self.fetched = StreamSink(dut, "fetch_data", dut.clk, stall=stall, seed=seed + 5)
        self.done = {"load": 0, "store": 0}
        self.cycle = 0
        self.taken = {"load": [], "store": []}  # cycles at which a request entered the port's queue
        self.done_at = {"load": [], "store": []}
        cocotb.start_soon(self._count())

    async def _count(self):
        while True:  # sampled where the bus models sample: after the falling edge's inputs settled
            await FallingEdge(self.dut.clk)
            await ReadOnly()
            self.cycle += 1
            for what in ("load", "store"):
                if getattr(self.dut, f"{what}_done").value:
                    self.done[what] += 1
                    self.done_at[what].append(self.cycle)
                if getattr(self.dut, f"{what}_req__valid").value and getattr(self.dut, f"{what}_req__ready").value:
                    self.taken[what].append(self.cycle)

    async def wait(self, what: str, rows: int, limit: int = 20000) -> int:
        for cycle in range(limit):
            await FallingEdge(self.dut.clk)
            await ReadOnly()
            if self.done[what] >= rows and (what == "load" or self.dut.write_idle.value):
                await FallingEdge(self.dut.clk)
                return cycle
        raise TimeoutError(f"{self.done[what]} of {rows} {what} rows done after {limit} cycles")


async def start(dut, **kw) -> Bench:
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.rst.value = 1
    dut.bd_write__en.value = 0
    dut.bd_read__en.value = 0
    bench = Bench(dut, **kw)
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    return bench


def random_row(rng, beat: int, buffer_bytes: dict[int, int]) -> tuple[int, int, int, int]:
    """(hbm addr, buf, buf addr, nbytes), biased to edge cases: 1 byte, whole beats, 4 KiB crossings."""
    kind = rng.random()
    if kind < 0.15:
        nbytes = 1
    elif kind < 0.3:
        nbytes = beat * rng.randrange(1, 6)
    else:
        nbytes = rng.randrange(1, 7 * beat)
    if rng.random() < 0.3:
        addr = 4096 * rng.randrange(1, MEMORY_BYTES // 4096) - rng.randrange(1, 3 * beat)
    else:
        addr = rng.randrange(0, MEMORY_BYTES - nbytes)
    if rng.random() < 0.25:
        addr -= addr % beat
    buf = rng.choice(BUFFERS)
    at = rng.randrange(0, buffer_bytes[buf] - nbytes)
    return addr, buf, at, nbytes


async def read_buffers(dut, word: int, buffer_bytes: dict[int, int]) -> dict[int, bytearray]:
    return {b: bytearray(await backdoor_read(dut, word, b, 0, n)) for b, n in buffer_bytes.items()}


def buffer_sizes() -> dict[int, int]:
    return {int(k): v for k, v in json.loads(os.environ["DMA_BUFFERS"]).items()}


@cocotb.test()
async def loads_and_fetches(dut):
    """Random LOAD rows (buffers start as zeros) with instruction fetches interleaved on the read channel."""
    stall = float(os.environ.get("DMA_STALL", "0"))
    bench = await start(dut, stall=stall, seed=int(os.environ.get("DMA_SEED", "1")))
    sizes = buffer_sizes()
    model = {b: bytearray(n) for b, n in sizes.items()}
    rows = [random_row(bench.rng, bench.beat, sizes) for _ in range(40)]
    fetches = []
    for k, (addr, buf, at, nbytes) in enumerate(rows):
        bench.loads.send(pack(RowRequest, addr=addr, buf=buf, buf_addr=at, nbytes=nbytes))
        model[buf][at:at + nbytes] = bench.memory.read_bytes(addr, nbytes)
        if k % 7 == 3:
            f_addr, f_beats = bench.beat * bench.rng.randrange(0, 512), bench.rng.randrange(1, 9)
            bench.fetches.send(pack(TransferCommand, addr=f_addr, beats=f_beats))
            fetches += [int.from_bytes(bench.memory.read_bytes(f_addr + i * bench.beat, bench.beat), "little")
                        for i in range(f_beats)]
    cycles = await bench.wait("load", len(rows))
    got = await read_buffers(dut, bench.word, sizes)
    for b in sizes:
        if got[b] != model[b]:
            at = next(i for i in range(sizes[b]) if got[b][i] != model[b][i])
            raise AssertionError(f"{Buffer(b).name} byte {at}: got {got[b][at]:#x}, expected {model[b][at]:#x} "
                                 f"(rows {[r for r in rows if r[1] == b and r[2] <= at < r[2] + r[3]]})")
    assert bench.fetched.received == fetches, "instruction fetch beats differ"
    assert not dut.fault.value, "a buffer access went outside a buffer"
    bench.memory.check()
    dut._log.info("%d load rows in %d cycles", len(rows), cycles)


@cocotb.test()
async def stores(dut):
    """Random STORE rows from random buffer contents: bytes outside each row keep their value."""
    stall = float(os.environ.get("DMA_STALL", "0"))
    bench = await start(dut, stall=stall, seed=int(os.environ.get("DMA_SEED", "1")) + 100)
    sizes = buffer_sizes()
    contents = {b: bench.rng.randbytes(n) for b, n in sizes.items()}
    for b, payload in contents.items():
        await backdoor_write(dut, bench.word, b, 0, payload)
    model = bytearray(bench.memory.mem)
    rows = [random_row(bench.rng, bench.beat, sizes) for _ in range(40)]
    for addr, buf, at, nbytes in rows:
        bench.stores.send(pack(RowRequest, addr=addr, buf=buf, buf_addr=at, nbytes=nbytes))
        model[addr:addr + nbytes] = contents[buf][at:at + nbytes]
    cycles = await bench.wait("store", len(rows))
    if bench.memory.mem != model:
        at = next(i for i in range(MEMORY_BYTES) if bench.memory.mem[i] != model[i])
        raise AssertionError(f"HBM byte {at}: got {bench.memory.mem[at]:#x}, expected {model[at]:#x}")
    bench.memory.check()
    dut._log.info("%d store rows in %d cycles", len(rows), cycles)


@cocotb.test()
async def row_timing(dut):
    """Cycles of runs of rows at full rate (no stalls, read latency 2) from the first request taken to the
    last row done, written to $DMA_TIMING: per case the row shape and the cycles measured."""
    bench = await start(dut, stall=0.0, seed=9, read_latency=2)
    bb, w = bench.beat, bench.word
    out = {}
    cases = [("aligned", 4 * bb, 0, 0, 2), ("unaligned", 4 * bb + 3, 5, 3, 2), ("short", 3, 1, 0, 2),
             ("long", 20 * bb, 0, 0, 2), ("hbmskew", 9 * bb, 3, 0, 2), ("bufskew", 4 * bb, 0, 3, 2),
             ("bufskew2", 4 * bb + 6, 0, 3, 2), ("tail", 4 * bb + 2, 6, 0, 2), ("small", 5, 6, 7, 2),
             ("latency", 4 * bb, 0, 0, 7), ("latency_short", 3, 0, 0, 7)]
    for name, nbytes, hbm_skew, buf_skew, latency in cases:
        bench.memory.read_latency = latency
        for count in (1, 5):
            for what, source in (("load", bench.loads), ("store", bench.stores)):
                before, first_taken = bench.done[what], len(bench.taken[what])
                for r in range(count):
                    source.send(pack(RowRequest, addr=1024 * r + hbm_skew, buf=int(Buffer.ACT),
                                     buf_addr=512 * r + buf_skew, nbytes=nbytes))
                await bench.wait(what, before + count)
                cycles = bench.done_at[what][-1] - bench.taken[what][first_taken]
                out[f"{what}_{name}_{count}"] = dict(nbytes=nbytes, hbm_skew=hbm_skew, buf_skew=buf_skew, rows=count,
                                                     latency=latency, cycles=cycles)
    with open(os.environ["DMA_TIMING"], "w") as handle:
        json.dump(out, handle)
