"""cocotb tests of the XRT kernel top (rtl/kernel_shell.py wrapped by rtl/emit.py), driven as
XRT drives it: arguments and ap_start over s_axi_control, one AXI memory per HBM port.

Settings from the environment (set by test_kernel_shell.py): KERNEL_PORTS, KERNEL_MAX_BURST.
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from llmfab.rtl.axi_models import XRT_SEPARATOR, AxiLiteHost, AxiMemory
from llmfab.rtl.control import (CTRL_AP_DONE, CTRL_AP_IDLE, CTRL_AP_START, CTRL_OFFSET, GIE_OFFSET, IER_OFFSET,
                                IRQ_DONE, ISR_OFFSET)
from llmfab.rtl.kernel_shell import master_bundle, pointer_argument, shell_register_map

MEMORY_BYTES = 64 * 1024
MAX_CYCLES = 50000


class Kernel:
    def __init__(self, dut, *, stall: float, seed: int):
        self.dut = dut
        self.ports = int(os.environ["KERNEL_PORTS"])
        self.registers = shell_register_map(self.ports)
        self.beat_bytes = len(dut.m_axi_hbm00_wdata) // 8
        self.rng = random.Random(seed)
        self.host = AxiLiteHost(dut, "s_axi_control", dut.ap_clk, separator=XRT_SEPARATOR)
        self.memories = [AxiMemory(dut, master_bundle(p), dut.ap_clk, MEMORY_BYTES, data_width=8 * self.beat_bytes,
                                   stall=stall, seed=seed + p, separator=XRT_SEPARATOR) for p in range(self.ports)]

    async def write_argument(self, name: str, value: int) -> None:
        arg = self.registers[name]
        for w in range(arg.size_bytes // 4):
            await self.host.write(arg.offset + 4 * w, value >> (32 * w))

    async def run(self, pointers: list[int], src: int, dst: int, beats: int) -> int:
        """One kernel run as XRT does it; returns the cycles from ap_start to ap_done."""
        for p, pointer in enumerate(pointers):
            await self.write_argument(pointer_argument(p), pointer)
        await self.write_argument("src_offset", src)
        await self.write_argument("dst_offset", dst)
        await self.write_argument("beats", beats)
        assert await self.host.read(CTRL_OFFSET) & CTRL_AP_IDLE
        await self.host.write(CTRL_OFFSET, CTRL_AP_START)
        for cycles in range(MAX_CYCLES):
            await FallingEdge(self.dut.ap_clk)
            await ReadOnly()
            if self.dut.interrupt.value:
                break
        else:
            raise TimeoutError(f"no interrupt {MAX_CYCLES} cycles after ap_start")
        assert await self.host.read(CTRL_OFFSET) & (CTRL_AP_DONE | CTRL_AP_IDLE) == CTRL_AP_DONE | CTRL_AP_IDLE
        assert await self.host.read(ISR_OFFSET) == IRQ_DONE
        await self.host.write(ISR_OFFSET, IRQ_DONE)
        return cycles


async def _start(dut, *, stall: float, seed: int) -> Kernel:
    cocotb.start_soon(Clock(dut.ap_clk, 4, unit="ns").start())
    dut.ap_rst_n.value = 0
    kernel = Kernel(dut, stall=stall, seed=seed)
    await ClockCycles(dut.ap_clk, 8)  # XRT holds reset for several cycles
    await FallingEdge(dut.ap_clk)
    dut.ap_rst_n.value = 1
    await ClockCycles(dut.ap_clk, 2)
    await kernel.host.write(GIE_OFFSET, 1)
    await kernel.host.write(IER_OFFSET, IRQ_DONE)
    return kernel


async def _copy_runs(dut, stall: float, seed: int) -> None:
    kernel = await _start(dut, stall=stall, seed=seed)
    bb = kernel.beat_bytes
    for memory in kernel.memories:
        memory.write_bytes(0, kernel.rng.randbytes(MEMORY_BYTES))
    max_burst = int(os.environ["KERNEL_MAX_BURST"])
    # two runs, the second starting the kernel again with other arguments; the source starts
    # just below a 4 KiB page and the destination one beat past a page, regions apart
    beats = 3 * max_burst + 5
    src = 4096 - 3 * bb
    dst = (src + beats * bb) // 4096 * 4096 + 4096 + bb
    assert dst + beats * bb + 32 * bb <= MEMORY_BYTES
    for beats, src, dst in [(beats, src, dst), (7, 0, 8192)]:
        pointers = [bb * kernel.rng.randrange(0, 32) for _ in range(kernel.ports)]
        before = [bytes(m.mem) for m in kernel.memories]
        cycles = await kernel.run(pointers, src, dst, beats)
        for p, memory in enumerate(kernel.memories):
            source = pointers[p] + src
            target = pointers[p] + dst
            expected = bytearray(before[p])
            expected[target:target + beats * bb] = before[p][source:source + beats * bb]
            assert memory.mem == expected, f"port {p}: memory differs after copying {beats} beats"
            memory.check()
        dut._log.info("copied %d beats per port on %d ports in %d cycles", beats, kernel.ports, cycles)
        assert cycles >= beats, "a copy cannot be faster than one beat per cycle"


@cocotb.test()
async def copies_on_every_port(dut):
    """Two runs back to back, full rate: every port copies its region, ap_done raises the interrupt."""
    await _copy_runs(dut, stall=0.0, seed=5)


@cocotb.test()
async def copies_under_backpressure(dut):
    await _copy_runs(dut, stall=0.35, seed=6)


@cocotb.test()
async def zero_beats_finishes_without_traffic(dut):
    kernel = await _start(dut, stall=0.0, seed=7)
    await kernel.run([0] * kernel.ports, 0, 4096, 0)
    assert all(not m.bursts for m in kernel.memories)
