"""ATTENTION sequencer against the emulator's handler: every key and value mode, 4- and 8-bit
codes, grouped-query heads, causal prefill and decode, dense and Λ caches, on random and extreme
ACT32 data, at two geometries; errors for what it does not execute."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import Buffer, Flag, Instruction, KvMode, Opcode, Registers, RowSource
from llmfab.compiler.kv_layout import KvStreamLayout, LambdaStreamLayout
from llmfab.rtl.engine.seq_attention import AttentionSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.sim.emulator_lambda import LambdaView
from llmfab.sim.emulator_ops import StreamView
from llmfab.tests.rtl.engine.bench import BufferEmulator, Case, check, run_cases
from llmfab.tests.rtl.engine.geometries import TINY, WIDE32

ACT, KV, WGT = int(Buffer.ACT), int(Buffer.KV), int(Buffer.WGT)
MAX_HEAD_DIM, MAX_KEYS = 16, 32
LANES = {"tiny": 4, "wide32": 8}


def act32(rng, shape, low: int = 10, high: int = 24) -> np.ndarray:
    """Values of magnitudes 2^low .. 2^high, a few ACT32 extremes."""
    values = np.round(rng.standard_normal(shape) * 2.0 ** rng.integers(low, high, shape[:-1] + (1,))).astype(np.int64)
    flat = values.reshape(-1)
    picks = rng.integers(0, flat.size, max(1, flat.size // 40))
    flat[picks] = rng.choice([-(1 << 31), (1 << 31) - 1], picks.size)
    return np.clip(values, -(1 << 31), (1 << 31) - 1)


def stream_bytes(geometry, rng, lay: KvStreamLayout, tokens: int) -> bytes:
    """A stream region holding `tokens` random keys or values, appended as KV_QUANT appends them."""
    emu = BufferEmulator(geometry)
    emu.put(KV, 0, rng.integers(0, 256, lay.nbytes, dtype=np.uint8))
    x = act32(rng, (tokens, lay.kv_heads, lay.head_dim))
    cut = int(rng.integers(0, tokens + 1))
    for first, stop in ((0, cut), (cut, tokens)):
        if stop > first:
            StreamView(emu, 0, lay).append(x[first:stop], first)
    return bytes(emu.span(KV, 0, lay.nbytes))


def attention_case(geometry, rng, name: str, keys: KvMode, values: KvMode, t: int, p: int, heads: int, kv: int,
                   d: int, block: int = 4, cap: int = 16, kv8: bool = False, q_addr: int = 0, out_addr: int = 1024,
                   k_addr: int = 0, zero_query: bool = False) -> Case:
    bits = 8 if kv8 else 4
    klay, vlay = (KvStreamLayout(mode, cap, kv, d, block, bits) for mode in (keys, values))
    v_addr = k_addr + klay.nbytes + 64
    inst = Instruction(Opcode.ATTENTION, mode=int(keys) | int(values) << 2, flags=int(Flag.KV8) if kv8 else 0,
                       rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=q_addr, src1_buf=KV, src1_addr=k_addr,
                       stride=v_addr, dst_buf=ACT, dst_addr=out_addr, cols=heads * d, depth=d, sub=kv, aux=block,
                       imm=cap)
    q = act32(rng, (t, heads * d), 12, 22)
    if zero_query:
        q[0] = 0
    return Case(name, inst, t, Registers(t, p),
                inputs=[(ACT, q_addr, q.astype("<i4").tobytes()), (KV, k_addr, stream_bytes(geometry, rng, klay, p + t)),
                        (KV, v_addr, stream_bytes(geometry, rng, vlay, p + t))],
                outputs=[(ACT, out_addr, 4 * t * heads * d)])


def dense_cases(geometry, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    c = lambda *a, **k: attention_case(geometry, rng, *a, **k)  # noqa: E731
    tok, ch, raw = KvMode.KV4_TOKEN, KvMode.KV4_CHANNEL, KvMode.ACT32
    return [
        c("decode_gqa_aligned", ch, tok, 1, 4, 2, 1, 8),
        c("prefill_act32_from_0", raw, raw, 3, 0, 2, 2, 8, cap=6, zero_query=True),
        c("kv8_channel_staged", ch, ch, 2, 3, 1, 1, 8, kv8=True, k_addr=8),
        c("token_keys_act32_values_partial_beat", tok, raw, 2, 2, 2, 2, 6, q_addr=4, out_addr=1028),
        c("channel_t_gt_block", ch, tok, 5, 4, 2, 1, 4),
        c("head_dim_below_lanes", tok, ch, 2, 1, 4, 2, 2, block=2, cap=8),
        c("decode_token_aligned", tok, tok, 1, 6, 2, 1, 8),
        c("prefill_kv8_token_act32_aligned", tok, raw, 2, 3, 2, 2, 8, kv8=True, cap=8),
        c("channel_key_blocks_d16_aligned", ch, tok, 2, 9, 2, 1, 16, block=2, cap=12),
        c("channel_long_blocks_aligned", ch, ch, 2, 15, 1, 1, 8, block=8, cap=24),
        c("channel_value_slices_aligned", tok, ch, 1, 12, 2, 1, 16, block=6, cap=18),
    ]


def timed(case: Case, geometry, lanes: int) -> bool:
    """The cycle formula's condition: every span one word read (a beat of A ACT32 values fits a
    word, the operands and every head start on a word), any key and value modes."""
    i, w = case.inst, geometry.word_bytes
    return (4 * lanes <= w and 4 * i.depth % w == 0
            and all(a % w == 0 for a in (i.src0_addr, i.dst_addr, i.src1_addr, i.stride)))


def stream_modes(inst: Instruction) -> dict:
    """The cycle formulas' keyword arguments of the instruction's streams: key and value KvMode, B."""
    return dict(key_mode=KvMode(inst.mode & 3), value_mode=KvMode(inst.mode >> 2), block=inst.aux)


@pytest.mark.parametrize("geometry", [TINY, WIDE32], ids=["tiny", "wide32"])
@pytest.mark.parametrize("simulator", simulator_params())
def test_attention_dense_equals_emulator(geometry, simulator, tmp_path, request):
    lanes = LANES[request.node.callspec.id.split("-")[-1]]
    cases = dense_cases(geometry, 11 if geometry is TINY else 12)
    runs = check(AttentionSequencer(geometry, lanes, MAX_HEAD_DIM, MAX_KEYS), cases, simulator, tmp_path, "seq_attention")
    assert_cycles(cases, runs, geometry, lanes, timed, lambda case: AttentionSequencer.cycles(
        geometry, lanes, case.rows, case.regs.position, case.inst.cols // case.inst.depth, case.inst.depth,
        **stream_modes(case.inst)))


def assert_cycles(cases: list[Case], runs, geometry, lanes: int, timed_case, model) -> None:
    """The formula `model(case)` exact where `timed_case` holds (at least two cases when a beat fits
    a word), a lower bound elsewhere (more reads per beat or per statistics fill)."""
    exact = 0
    for case, run in zip(cases, runs):
        want = model(case)
        if timed_case(case, geometry, lanes):
            assert run.cycles == want, f"case {case.name}: {run.cycles} cycles, the formula says {want}"
            exact += 1
        else:
            assert run.cycles >= want, f"case {case.name}: {run.cycles} cycles, below the formula's {want}"
    assert exact >= (2 if 4 * lanes <= geometry.word_bytes else 0)


def lambda_bytes(geometry, rng, lay: LambdaStreamLayout, tokens: int, run: int) -> bytes:
    """A Λ region after KV_QUANT stored `tokens` random keys or values in prefill chunks of at most
    C tokens, the last chunk being the run's `run` tokens."""
    emu = BufferEmulator(geometry)
    emu.put(KV, 0, rng.integers(0, 256, lay.nbytes, dtype=np.uint8))
    x = act32(rng, (tokens, lay.kv_heads, lay.head_dim))
    view = LambdaView(emu, 0, lay)
    cuts, end = [], tokens - run
    while end > 0:
        cuts.append(max(0, end - int(rng.integers(1, lay.chunk + 1))))
        end = cuts[-1]
    bounds = sorted(set([0, *cuts, tokens - run, tokens]))
    for first, stop in zip(bounds, bounds[1:]):
        view.store(x[first:stop], first)
    return bytes(emu.span(KV, 0, lay.nbytes))


def rope_table(rng, slots: int, d: int) -> bytes:
    """TRIG18 cos and sin rows of `slots` positions (random frequencies), int32 as the compiler stores them."""
    angles = np.arange(slots)[:, None] * rng.uniform(0.05, 1.5, d // 2)[None, :]
    table = np.concatenate([np.round(np.cos(angles) * 65536), np.round(np.sin(angles) * 65536)], axis=1)
    return table.astype("<i4").tobytes()


def lambda_attention_case(geometry, rng, name: str, keys: KvMode, values: KvMode, t: int, p: int, heads: int,
                          kv: int, d: int, shape: tuple, block: int = 4, kv8: bool = False, q_addr: int = 0,
                          out_addr: int = 1024, table: int = 512) -> Case:
    sinks, window, chunk = shape
    bits = 8 if kv8 else 4
    klay, vlay = (LambdaStreamLayout(mode, sinks, window, chunk, kv, d, block, bits) for mode in (keys, values))
    v_addr = klay.nbytes + 64
    inst = Instruction(Opcode.ATTENTION, mode=int(keys) | int(values) << 2,
                       flags=int(Flag.LAMBDA) | (int(Flag.KV8) if kv8 else 0), rows_src=RowSource.TOKENS,
                       src0_buf=ACT, src0_addr=q_addr, src1_buf=KV, src1_addr=0, stride=v_addr, dst_buf=ACT,
                       dst_addr=out_addr, cols=heads * d, depth=d, sub=kv, aux=block, imm=table)
    q = act32(rng, (t, heads * d), 12, 22)
    return Case(name, inst, t, Registers(t, p, sinks, window, chunk),
                inputs=[(ACT, q_addr, q.astype("<i4").tobytes()), (WGT, table, rope_table(rng, sinks + window, d)),
                        (KV, 0, lambda_bytes(geometry, rng, klay, p + t, t)),
                        (KV, v_addr, lambda_bytes(geometry, rng, vlay, p + t, t))],
                outputs=[(ACT, out_addr, 4 * t * heads * d)])


def lambda_cases(geometry, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    c = lambda *a, **k: lambda_attention_case(geometry, rng, *a, **k)  # noqa: E731
    tok, ch, raw = KvMode.KV4_TOKEN, KvMode.KV4_CHANNEL, KvMode.ACT32
    return [
        c("ring_filling_gqa", ch, tok, 3, 0, 2, 1, 8, (2, 4, 3)),
        c("ring_full_decode", ch, tok, 1, 9, 2, 1, 8, (2, 4, 3)),
        c("prefill_chunk_wraps_ring", ch, ch, 3, 5, 1, 1, 8, (2, 4, 3)),
        c("sinks_only", ch, tok, 3, 0, 1, 1, 8, (4, 2, 3)),
        c("act32_no_sinks", raw, raw, 2, 6, 2, 2, 4, (0, 4, 2)),
        c("kv8_token_keys_ring_full", tok, ch, 2, 8, 2, 2, 4, (1, 3, 2), block=2, kv8=True),
        c("sink_tail_never_fills", ch, tok, 2, 6, 1, 1, 8, (3, 4, 2), block=2),
        c("kv8_channel_ring_full", ch, ch, 2, 12, 1, 1, 8, (2, 4, 3), kv8=True),
        c("token_keys_chunk_wraps_gqa", tok, raw, 3, 6, 2, 1, 8, (1, 4, 3)),
        c("filling_act32_aligned", raw, raw, 3, 2, 2, 1, 8, (2, 4, 3)),
        c("ring_full_token_aligned", tok, tok, 2, 9, 2, 2, 8, (2, 4, 3)),
        c("channel_keys_d16_aligned", ch, tok, 2, 9, 2, 1, 16, (1, 8, 2), block=2),
        c("channel_long_window_blocks_aligned", ch, ch, 2, 14, 1, 1, 8, (1, 12, 3), block=8),
    ]


def lambda_timed(case: Case, geometry, lanes: int) -> bool:
    """The Λ cycle formula's condition: the dense one, and the RoPE rows on a word."""
    return timed(case, geometry, lanes) and case.inst.imm % geometry.word_bytes == 0


@pytest.mark.parametrize("geometry", [TINY, WIDE32], ids=["tiny", "wide32"])
@pytest.mark.parametrize("simulator", simulator_params())
def test_attention_lambda_equals_emulator(geometry, simulator, tmp_path, request):
    lanes = LANES[request.node.callspec.id.split("-")[-1]]
    cases = lambda_cases(geometry, 13 if geometry is TINY else 14)
    runs = check(AttentionSequencer(geometry, lanes, MAX_HEAD_DIM, MAX_KEYS), cases, simulator, tmp_path, "seq_attention")

    def model(case: Case) -> int:
        i, regs = case.inst, case.regs
        return AttentionSequencer.lambda_cycles(geometry, lanes, case.rows, regs.position, i.cols // i.depth, i.depth,
                                                regs.sinks, regs.window, **stream_modes(i))

    assert_cycles(cases, runs, geometry, lanes, lambda_timed, model)


ERRORS = [  # (name, instruction changes, rows, position): operands the sequencer refuses (done with error)
    ("key_mode_3", dict(mode=3), 1, 0),
    ("value_mode_3", dict(mode=3 << 2), 1, 0),
    ("head_dim_0", dict(depth=0), 1, 0),
    ("cols_not_heads", dict(cols=18), 1, 0),
    ("kv_heads_0", dict(sub=0), 1, 0),
    ("heads_not_groups", dict(cols=24, sub=2), 1, 0),
    ("head_dim_over_max", dict(cols=2 * (MAX_HEAD_DIM + 4), depth=MAX_HEAD_DIM + 4), 1, 0),
    ("kv4_odd_head_dim", dict(mode=int(KvMode.KV4_TOKEN), cols=6, depth=3), 1, 0),
    ("block_0", dict(mode=int(KvMode.KV4_CHANNEL), aux=0), 1, 0),
    ("capacity_not_blocks", dict(mode=int(KvMode.KV4_CHANNEL) << 2, imm=18), 1, 0),
    ("past_capacity", dict(), 2, 15),
    ("past_max_keys", dict(mode=int(KvMode.KV4_TOKEN) * 5, imm=64), 2, MAX_KEYS - 1),
    ("keys_not_in_kv", dict(src1_buf=ACT), 1, 0),
    ("region_past_buffer", dict(stride=TINY.buffers.words[Buffer.KV] * TINY.word_bytes - 64), 1, 0),
    ("output_over_keys", dict(dst_buf=KV, dst_addr=32), 1, 0),
    ("output_shifted_over_queries", dict(dst_addr=4), 2, 0),
]


@pytest.mark.parametrize("simulator", simulator_params())
def test_attention_refuses_what_it_does_not_execute(simulator, tmp_path):
    base = Instruction(Opcode.ATTENTION, mode=0, rows_src=RowSource.TOKENS, src0_buf=ACT, src1_buf=KV, src1_addr=0,
                       stride=1024, dst_buf=ACT, dst_addr=0, cols=16, depth=8, sub=1, aux=4, imm=16)
    cases = [Case(name, base.replace(**changes), rows, Registers(rows, p)) for name, changes, rows, p in ERRORS]
    assert_refused(cases, simulator, tmp_path)


def assert_refused(cases: list[Case], simulator: str, tmp_path) -> None:
    """Every case ends with done and error, touching no buffer."""
    runs = run_cases(AttentionSequencer(TINY, LANES["tiny"], MAX_HEAD_DIM, MAX_KEYS), cases, [[] for _ in cases],
                     simulator, tmp_path, "seq_attention")
    assert len(runs) == len(cases)
    for case, run in zip(cases, runs):
        assert run.cycles is not None and run.error, f"case {case.name}: no error"
        assert not run.fault, f"case {case.name}: touched a buffer"


LAMBDA_ERRORS = [  # (name, instruction changes, rows, position, (S, W, C)): Λ operands the sequencer refuses
    ("window_0", dict(), 1, 0, (2, 0, 3)),
    ("odd_head_dim", dict(cols=6, depth=3), 1, 0, (2, 4, 3)),
    ("kv4_keys_odd_half", dict(mode=int(KvMode.KV4_TOKEN), cols=12, depth=6), 1, 0, (2, 4, 3)),
    ("past_max_keys", dict(cols=8, depth=4), 2, MAX_KEYS, (2, MAX_KEYS - 1, 3)),
    ("region_past_buffer", dict(stride=TINY.buffers.words[Buffer.KV] * TINY.word_bytes - 64), 1, 0, (2, 4, 3)),
    ("key_mode_3", dict(mode=3), 1, 0, (2, 4, 3)),
]


@pytest.mark.parametrize("simulator", simulator_params())
def test_attention_lambda_refuses_what_it_does_not_execute(simulator, tmp_path):
    base = Instruction(Opcode.ATTENTION, mode=0, flags=int(Flag.LAMBDA), rows_src=RowSource.TOKENS, src0_buf=ACT,
                       src1_buf=KV, src1_addr=0, stride=1024, dst_buf=ACT, dst_addr=0, cols=16, depth=8, sub=1, aux=4,
                       imm=512)
    cases = [Case(name, base.replace(**changes), rows, Registers(rows, p, *shape))
             for name, changes, rows, p, shape in LAMBDA_ERRORS]
    assert_refused(cases, simulator, tmp_path)
