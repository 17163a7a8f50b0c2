"""Byte streams (rtl/engine/bytestream.py) in Amaranth's simulator: buffer-to-buffer copies at
every alignment through WordReader -> ByteWriter, at equal and different widths, under stalls."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from llmfab.compiler.isa import Buffer
from llmfab.rtl.engine.buffers import BufferGeometry, EngineBuffers
from llmfab.rtl.engine.bytestream import ByteWriter, Packer, WordReader


class CopyBench(wiring.Component):
    """Buffers with a reader feeding a writer through a Packer (widths may differ), and a backdoor."""

    def __init__(self, geometry: BufferGeometry, lane_bytes: int):
        self.geometry = geometry
        self.reader = WordReader(geometry, lane_bytes)
        self.writer = ByteWriter(geometry, lane_bytes)
        self.buffers = EngineBuffers(geometry, reads=2, writes=2)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffers = self.buffers
        m.submodules.reader = self.reader
        m.submodules.writer = self.writer
        wiring.connect(m, self.reader.port, self.buffers.read[0])
        wiring.connect(m, self.writer.port, self.buffers.write[0])
        wiring.connect(m, self.reader.o, self.writer.i)
        return m


GEOMETRY = BufferGeometry(8, {Buffer.WGT: 64, Buffer.ACT: 64, Buffer.KV: 16, Buffer.OUT: 16})


async def backdoor_write(ctx, port, buf, image: bytes, w: int):
    for word in range(len(image) // w):
        ctx.set(port.buf, buf)
        ctx.set(port.addr, word)
        ctx.set(port.data, int.from_bytes(image[word * w:(word + 1) * w], "little"))
        ctx.set(port.en, (1 << w) - 1)
        await ctx.tick()
    ctx.set(port.en, 0)


async def backdoor_read(ctx, port, buf, nbytes: int, w: int) -> bytes:
    out = bytearray()
    for word in range(nbytes // w):
        ctx.set(port.buf, buf)
        ctx.set(port.addr, word)
        ctx.set(port.en, 1)
        await ctx.tick()
        ctx.set(port.en, 0)
        out += ctx.get(port.data).to_bytes(w, "little")
    return bytes(out)


@pytest.mark.parametrize("lane_bytes", [8, 4, 16])
def test_copies_byte_ranges_at_every_alignment(lane_bytes):
    rng = random.Random(lane_bytes)
    bench = CopyBench(GEOMETRY, lane_bytes)
    w = GEOMETRY.word_bytes
    size = GEOMETRY.words[Buffer.ACT] * w
    cases = [(rng.randrange(0, 200), rng.randrange(0, 200), rng.randrange(1, 56)) for _ in range(24)]
    cases += [(0, 0, 8), (3, 5, 1), (7, 0, 9), (0, 7, 16), (5, 5, 0)]
    backdoor, check = bench.buffers.write[1], bench.buffers.read[1]
    failures = []

    async def bench_process(ctx):
        source = bytes(rng.randrange(256) for _ in range(size))
        await backdoor_write(ctx, backdoor, Buffer.WGT, source, w)
        expected = bytearray(size)
        await backdoor_write(ctx, backdoor, Buffer.ACT, bytes(expected), w)
        for src, dst, n in cases:
            for cmd, addr, buf in ((bench.reader.cmd, src, Buffer.WGT), (bench.writer.cmd, dst, Buffer.ACT)):
                ctx.set(cmd.payload.buf, buf)
                ctx.set(cmd.payload.addr, addr)
                ctx.set(cmd.payload.nbytes, n)
                ctx.set(cmd.valid, 1)
                await ctx.tick().until(cmd.ready)
                ctx.set(cmd.valid, 0)
            expected[dst:dst + n] = source[src:src + n]
            for _ in range(200):
                await ctx.tick()
                if ctx.get(bench.reader.idle) and ctx.get(bench.writer.idle):
                    break
            else:
                failures.append(f"copy {src}->{dst} of {n} bytes never finished")
                return
            got = await backdoor_read(ctx, check, Buffer.ACT, size, w)
            if got != bytes(expected):
                diff = [k for k in range(size) if got[k] != expected[k]]
                failures.append(f"copy {src}->{dst} of {n} bytes: bytes {diff[:8]} differ")
                return
        if ctx.get(bench.buffers.fault):
            failures.append("buffer fault")

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(bench_process)
    sim.run()
    assert not failures, failures


def test_packer_keeps_one_chunk_per_cycle_and_separates_transfers():
    packer = Packer(4, 4)
    outputs = []

    async def feed(ctx):
        chunks = [(0x04030201, 1, 3, 0), (0x08070605, 0, 4, 0), (0x0C0B0A09, 0, 2, 1), (0xAABBCCDD, 0, 4, 1)]
        for value, first, count, last in chunks:
            ctx.set(packer.i.payload.data, value)
            ctx.set(packer.i.payload.first, first)
            ctx.set(packer.i.payload.count, count)
            ctx.set(packer.i.payload.last, last)
            ctx.set(packer.i.valid, 1)
            await ctx.tick().until(packer.i.ready)
        ctx.set(packer.i.valid, 0)

    async def watch(ctx):
        ctx.set(packer.o.ready, 1)
        async for _, _, valid, data, count, last in ctx.tick().sample(
                packer.o.valid, packer.o.payload.data, packer.o.payload.count, packer.o.payload.last):
            if valid:
                outputs.append((data & ((1 << 8 * count) - 1), count, last))
            if len(outputs) == 4:
                return

    sim = Simulator(packer)
    sim.add_clock(1e-8)
    sim.add_testbench(feed)
    sim.add_testbench(watch)
    sim.run_until(1e-6)
    # 3 + 4 + 2 bytes = one transfer of 9 bytes: 4, 4, 1; then a transfer of 4
    assert outputs == [(0x05040302, 4, 0), (0x09080706, 4, 0), (0x0A, 1, 1), (0xAABBCCDD, 4, 1)]
