"""KV_QUANT sequencer against the emulator's handler: every cache mode, 4- and 8-bit codes, dense
and Λ streams, on random and extreme ACT32 rows, at two geometries; errors for the modes it does
not execute; the byte-span reader and writer it is built on (Amaranth's simulator)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from llmfab.compiler.isa import Buffer, Flag, Instruction, KvMode, Opcode, Registers, RowSource
from llmfab.compiler.kv_layout import KvStreamLayout, LambdaStreamLayout
from llmfab.rtl.engine.buffers import BufferGeometry, EngineBuffers
from llmfab.rtl.engine.kv_stream import GatherReader, ScatterWriter
from llmfab.rtl.engine.seq_kv_quant import KvQuantSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.tests.rtl.engine.bench import Case, check, run_cases
from llmfab.tests.rtl.engine.geometries import TINY, WIDE32

ACT, KV = int(Buffer.ACT), int(Buffer.KV)
MAX_HEAD_DIM, MAX_BLOCK = 16, 8


def act32_rows(rng, rows: int, cols: int) -> np.ndarray:
    """Rows of every magnitude, with ACT32 extremes, a constant row and an all-zero row."""
    scale = 2.0 ** rng.integers(0, 31, (rows, 1))
    values = np.clip(np.round(rng.standard_normal((rows, cols)) * scale), -(1 << 31), (1 << 31) - 1).astype(np.int64)
    kind = rng.integers(0, 6, rows)
    for r in range(rows):
        if kind[r] == 0:
            values[r, :2] = [-(1 << 31), (1 << 31) - 1][:min(2, cols)]
        elif kind[r] == 1:
            values[r] = int(rng.integers(-(1 << 31), 1 << 31))
        elif kind[r] == 2:
            values[r] = 0
    return values


def kv_quant_case(rng, name: str, mode: KvMode, t: int, p: int, kv: int, d: int, block: int = 4, cap: int = 16,
                  kv8: bool = False, src: int = 0, dst: int = 0) -> Case:
    inst = Instruction(Opcode.KV_QUANT, mode=int(mode), flags=int(Flag.KV8) if kv8 else 0, rows_src=RowSource.TOKENS,
                       src0_buf=ACT, src0_addr=src, dst_buf=KV, dst_addr=dst, cols=kv * d, depth=d, aux=block, imm=cap)
    lay = KvStreamLayout(mode, cap, kv, d, block, 8 if kv8 else 4)
    region = rng.integers(0, 256, lay.nbytes, dtype=np.uint8).tobytes()
    x = act32_rows(rng, t, kv * d).astype("<i4").tobytes()
    return Case(name, inst, t, Registers(t, p), inputs=[(ACT, src, x), (KV, dst, region)],
                outputs=[(KV, dst, lay.nbytes)])


def lambda_case(rng, name: str, mode: KvMode, t: int, p: int, kv: int, d: int, sinks: int, window: int, chunk: int,
                block: int = 4, kv8: bool = False, src: int = 0, dst: int = 0) -> Case:
    inst = Instruction(Opcode.KV_QUANT, mode=int(mode), flags=int(Flag.LAMBDA) | (int(Flag.KV8) if kv8 else 0),
                       rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=src, dst_buf=KV, dst_addr=dst, cols=kv * d,
                       depth=d, aux=block)
    lay = LambdaStreamLayout(mode, sinks, window, chunk, kv, d, block, 8 if kv8 else 4)
    region = rng.integers(0, 256, lay.nbytes, dtype=np.uint8).tobytes()
    x = act32_rows(rng, t, kv * d).astype("<i4").tobytes()
    return Case(name, inst, t, Registers(t, p, sinks, window, chunk), inputs=[(ACT, src, x), (KV, dst, region)],
                outputs=[(KV, dst, lay.nbytes)])


def lambda_cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    c = lambda *a, **k: lambda_case(rng, *a, **k)  # noqa: E731
    raw, tok, ch = KvMode.ACT32, KvMode.KV4_TOKEN, KvMode.KV4_CHANNEL
    return [
        c("act32_ring_filling", raw, 3, 0, 2, 4, 2, 4, 3),
        c("act32_chunk_wraps_slots", raw, 3, 7, 1, 4, 2, 4, 3, dst=40),
        c("token_kv8_ring_full", tok, 2, 10, 2, 4, 1, 4, 2, kv8=True, src=8),
        c("channel_sinks_fill", ch, 3, 0, 2, 4, 2, 6, 3),
        c("channel_window_block", ch, 3, 5, 2, 4, 2, 6, 3, dst=16),
        c("channel_block_wraps_raw_ring", ch, 2, 8, 2, 4, 2, 6, 3),
        c("channel_ring_full_slot_wraps", ch, 3, 20, 1, 6, 2, 6, 3, kv8=True, src=4),
        c("channel_sinks_only", ch, 3, 1, 1, 4, 4, 2, 3),
        c("channel_no_sinks", ch, 2, 3, 2, 4, 0, 4, 2, block=2),
        c("channel_sink_tail_never_fills", ch, 5, 0, 1, 4, 3, 4, 5, block=2),
        c("channel_no_block_completes", ch, 1, 6, 2, 4, 2, 6, 3),
    ]


def dense_cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    c = lambda *a, **k: kv_quant_case(rng, *a, **k)  # noqa: E731
    return [
        c("act32_aligned", KvMode.ACT32, 3, 2, 2, 4, src=64, dst=256),
        c("act32_unaligned", KvMode.ACT32, 2, 5, 1, 6, src=36, dst=4),
        c("token_aligned", KvMode.KV4_TOKEN, 2, 3, 2, 8, src=0, dst=64),
        c("token_kv8_partial_beat", KvMode.KV4_TOKEN, 3, 0, 3, 6, kv8=True, src=12, dst=2),
        c("token_last_slot", KvMode.KV4_TOKEN, 1, 15, 1, 4, dst=128),
        c("channel_staging_only", KvMode.KV4_CHANNEL, 2, 0, 2, 4),
        c("channel_completes_block", KvMode.KV4_CHANNEL, 2, 2, 2, 4, dst=8),
        c("channel_just_before_boundary", KvMode.KV4_CHANNEL, 1, 3, 2, 4, src=4, dst=20),
        c("channel_at_boundary_t_gt_block", KvMode.KV4_CHANNEL, 6, 4, 1, 6, dst=16),
        c("channel_two_blocks_kv8", KvMode.KV4_CHANNEL, 9, 1, 2, 4, kv8=True, src=32),
        c("channel_block8", KvMode.KV4_CHANNEL, 10, 5, 1, 10, block=8, dst=32),
    ]


@pytest.mark.parametrize("geometry", [TINY, WIDE32], ids=["tiny", "wide32"])
@pytest.mark.parametrize("simulator", simulator_params())
def test_kv_quant_dense_equals_emulator(geometry, simulator, tmp_path):
    cases = dense_cases(7 if geometry is TINY else 8)
    runs = check(KvQuantSequencer(geometry, MAX_HEAD_DIM, MAX_BLOCK), cases, simulator, tmp_path, "seq_kv_quant")
    timed = 0
    for case, run in zip(cases, runs):
        i = case.inst
        model = KvQuantSequencer.cycles(geometry, KvMode(i.mode), case.rows, case.regs.position, i.cols // i.depth,
                                        i.depth, i.aux)
        if aligned(case, geometry.word_bytes):
            assert run.cycles == model, f"case {case.name}: {run.cycles} cycles, the formula says {model}"
            timed += 1
        else:  # a span across a word boundary takes one more read or write
            assert run.cycles >= model, f"case {case.name}: {run.cycles} cycles, below the aligned {model}"
    assert timed >= 4


def aligned(case: Case, word: int) -> bool:
    """Every beat one word read: src0 and the region on word boundaries, rows (and per-token heads) whole words."""
    i = case.inst
    return (i.src0_addr % word == 0 and i.dst_addr % word == 0 and 4 * i.cols % word == 0
            and (i.mode != KvMode.KV4_TOKEN or 4 * i.depth % word == 0))


@pytest.mark.parametrize("geometry", [TINY, WIDE32], ids=["tiny", "wide32"])
@pytest.mark.parametrize("simulator", simulator_params())
def test_kv_quant_lambda_equals_emulator(geometry, simulator, tmp_path):
    cases = lambda_cases(9 if geometry is TINY else 10)
    runs = check(KvQuantSequencer(geometry, MAX_HEAD_DIM, MAX_BLOCK), cases, simulator, tmp_path, "seq_kv_quant")
    timed = 0
    for case, run in zip(cases, runs):
        i, r = case.inst, case.regs
        model = KvQuantSequencer.cycles(geometry, KvMode(i.mode), case.rows, r.position, i.cols // i.depth, i.depth,
                                        i.aux, (r.sinks, r.window, r.chunk))
        print(case.name, run.cycles, model)
        if aligned(case, geometry.word_bytes):
            assert run.cycles == model, f"case {case.name}: {run.cycles} cycles, the formula says {model}"
            timed += 1
        else:
            assert run.cycles >= model, f"case {case.name}: {run.cycles} cycles, below the aligned {model}"
    assert timed >= 5


ERRORS = [  # (name, instruction changes, rows, position): operands the sequencer refuses (done with error)
    ("mode_3", dict(mode=3), 1, 0),
    ("head_dim_0", dict(depth=0), 1, 0),
    ("cols_not_heads", dict(cols=10), 1, 0),
    ("kv4_odd_head_dim", dict(mode=int(KvMode.KV4_TOKEN), cols=6, depth=3), 1, 0),
    ("head_dim_over_max", dict(mode=int(KvMode.KV4_TOKEN), cols=2 * (MAX_HEAD_DIM + 2), depth=MAX_HEAD_DIM + 2), 1, 0),
    ("block_0", dict(mode=int(KvMode.KV4_CHANNEL), aux=0), 1, 0),
    ("block_over_max", dict(mode=int(KvMode.KV4_CHANNEL), aux=2 * MAX_BLOCK, imm=4 * MAX_BLOCK), 1, 0),
    ("capacity_not_blocks", dict(mode=int(KvMode.KV4_CHANNEL), imm=18), 1, 0),
    ("past_capacity", dict(), 3, 14),
    ("dst_not_kv", dict(dst_buf=ACT), 1, 0),
    ("region_past_buffer", dict(dst_addr=TINY.buffers.words[Buffer.KV] * TINY.word_bytes - 64), 1, 0),
    ("source_in_region", dict(src0_buf=KV, src0_addr=40), 1, 0),
]


@pytest.mark.parametrize("simulator", simulator_params())
def test_kv_quant_refuses_what_it_does_not_execute(simulator, tmp_path):
    base = Instruction(Opcode.KV_QUANT, mode=int(KvMode.ACT32), rows_src=RowSource.TOKENS, src0_buf=ACT, dst_buf=KV,
                       cols=8, depth=4, aux=4, imm=16)
    cases = [Case(name, base.replace(**changes), rows, Registers(rows, p)) for name, changes, rows, p in ERRORS]
    runs = run_cases(KvQuantSequencer(TINY, MAX_HEAD_DIM, MAX_BLOCK), cases, [[] for _ in cases], simulator, tmp_path,
                     "seq_kv_quant")
    assert len(runs) == len(cases)
    for case, run in zip(cases, runs):
        assert run.cycles is not None and run.error, f"case {case.name}: no error"
        assert not run.fault, f"case {case.name}: touched a buffer"


class SpanCopyBench(wiring.Component):
    """GatherReader -> ScatterWriter on a buffer pair: a read command's tag is its chunk's
    destination address in ACT; `stall` holds the chunk between them."""

    def __init__(self, geometry: BufferGeometry, max_bytes: int):
        self.geometry = geometry
        self.reader = GatherReader(geometry, max_bytes, tag_bits=16)
        self.writer = ScatterWriter(geometry, max_bytes)
        self.buffers = EngineBuffers(geometry, reads=2, writes=2)
        super().__init__({"stall": wiring.In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffers, m.submodules.reader, m.submodules.writer = self.buffers, self.reader, self.writer
        wiring.connect(m, self.reader.port, self.buffers.read[0])
        wiring.connect(m, self.writer.port, self.buffers.write[0])
        chunk, out = self.reader.o.payload, self.writer.i.payload
        m.d.comb += [self.writer.i.valid.eq(self.reader.o.valid & ~self.stall),
                     self.reader.o.ready.eq(self.writer.i.ready & ~self.stall),
                     out.buf.eq(ACT), out.addr.eq(chunk.tag), out.count.eq(chunk.count), out.data.eq(chunk.data)]
        return m


SPAN_GEOMETRY = BufferGeometry(8, {Buffer.WGT: 64, Buffer.ACT: 64, Buffer.KV: 16, Buffer.OUT: 16})


async def _backdoor(ctx, port, buf, image: bytes | None, nbytes: int, w: int) -> bytes:
    out = bytearray()
    for word in range(nbytes // w):
        ctx.set(port.buf, buf)
        ctx.set(port.addr, word)
        if image is None:
            ctx.set(port.en, 1)
        else:
            ctx.set(port.data, int.from_bytes(image[word * w:(word + 1) * w], "little"))
            ctx.set(port.en, (1 << w) - 1)
        await ctx.tick()
        ctx.set(port.en, 0)
        if image is None:
            out += ctx.get(port.data).to_bytes(w, "little")
    return bytes(out)


@pytest.mark.parametrize("max_bytes", [4, 8, 20])
def test_span_reader_and_writer_copy_at_every_alignment(max_bytes):
    """Back-to-back spans of 1 .. max_bytes at random addresses copied chunk by chunk, under stalls."""
    rng = random.Random(max_bytes)
    bench = SpanCopyBench(SPAN_GEOMETRY, max_bytes)
    w, size = SPAN_GEOMETRY.word_bytes, SPAN_GEOMETRY.words[Buffer.ACT] * SPAN_GEOMETRY.word_bytes
    spans = [(rng.randrange(0, size - max_bytes), rng.randrange(0, size - max_bytes), rng.randrange(1, max_bytes + 1))
             for _ in range(60)]
    source = bytes(rng.randrange(256) for _ in range(size))
    expected = bytearray(size)
    for src, dst, n in spans:
        expected[dst:dst + n] = source[src:src + n]
    result = {}

    async def drive(ctx):
        await _backdoor(ctx, bench.buffers.write[1], Buffer.WGT, source, size, w)
        await _backdoor(ctx, bench.buffers.write[1], Buffer.ACT, bytes(size), size, w)
        cmd = bench.reader.cmd
        for src, dst, n in spans:
            ctx.set(cmd.payload.buf, Buffer.WGT)
            ctx.set(cmd.payload.addr, src)
            ctx.set(cmd.payload.nbytes, n)
            ctx.set(cmd.payload.tag, dst)
            ctx.set(cmd.valid, 1)
            await ctx.tick().until(cmd.ready)
        ctx.set(cmd.valid, 0)
        result["sent"] = True
        for _ in range(100):
            await ctx.tick()
        result["image"] = await _backdoor(ctx, bench.buffers.read[1], Buffer.ACT, None, size, w)
        result["fault"] = ctx.get(bench.buffers.fault)

    async def stall(ctx):
        while "sent" not in result:
            ctx.set(bench.stall, rng.random() < 0.3)
            await ctx.tick()
        ctx.set(bench.stall, 0)

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(stall, background=True)
    sim.run()
    assert not result["fault"]
    diff = [k for k in range(size) if result["image"][k] != expected[k]]
    assert not diff, f"bytes {diff[:8]} differ"


def test_span_reader_takes_one_word_spans_every_cycle():
    bench = SpanCopyBench(SPAN_GEOMETRY, 8)
    taken = []

    async def drive(ctx):
        cmd = bench.reader.cmd
        for k in range(16):
            ctx.set(cmd.payload.buf, Buffer.WGT)
            ctx.set(cmd.payload.addr, 8 * k + (k % 2) * 4)
            ctx.set(cmd.payload.nbytes, 4)
            ctx.set(cmd.payload.tag, 8 * k)
            ctx.set(cmd.valid, 1)
            await ctx.tick().until(cmd.ready)
            taken.append(k)
        ctx.set(cmd.valid, 0)

    async def count(ctx):
        cycles = 0
        async for _, _, en in ctx.tick().sample(bench.writer.port.en):
            cycles += 1
            if en:
                taken.append(("write", cycles))
            if cycles == 40:
                return

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(count)
    sim.run()
    writes = [c for item in taken if isinstance(item, tuple) for c in item[1:]]
    assert len(writes) == 16 and writes[-1] - writes[0] == 15  # one span per cycle, back to back
