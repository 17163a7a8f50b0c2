"""Each COMPUTE opcode of the emulator on random buffer contents against the numerics library,
and the vectorized GEMM against numerics.linear (including its float32 exactness limit)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import Buffer, Flag, GemmMode, Instruction, KvMode, Opcode, Registers, RowSource
from llmfab.compiler.kv_layout import KvStreamLayout
from llmfab.compiler.memory_plan import a8_stride
from llmfab.compiler.scheduler import norm_record
from llmfab.compiler.weight_tiles import TileShape, pack_tile
from llmfab.sim import numerics as nx
from llmfab.sim.emulator import Emulator
from llmfab.sim.emulator_gemm import PreparedTile, finish_rows
from llmfab.tests.sim.emulator_fixtures import compile_artifact, engine, tiny_artifact

T = 5
ACT = int(Buffer.ACT)


@pytest.fixture(scope="module")
def emu(tiny_hf_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ops")
    program = compile_artifact(tiny_artifact(folder / "art", tiny_hf_folder), folder / "prog", engine())[2]
    return Emulator(program)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def run(emu, inst: Instruction, position: int = 0) -> None:
    emu.registers = Registers(T, position)
    emu.execute(inst.replace(rows_src=RowSource.TOKENS))


def act32(rng, *shape, bits=24):
    return rng.integers(-(1 << bits), 1 << bits, shape)


def test_rmsnorm_requant_add_silu_mul(emu, rng):
    x, y = act32(rng, T, 64), act32(rng, T, 64)
    emu.write_act32(ACT, 0, x)
    emu.write_act32(ACT, 4096, y)
    norm = nx.prepare_norm(rng.uniform(0.5, 1.5, 64), 1e-5)
    emu.put(int(Buffer.WGT), 0, np.frombuffer(norm_record(norm), dtype=np.uint8))
    run(emu, Instruction(Opcode.RMSNORM, src0_buf=ACT, src0_addr=0, src1_buf=Buffer.WGT, src1_addr=0,
                         dst_buf=ACT, dst_addr=8192, cols=64))
    np.testing.assert_array_equal(emu.read_act32(ACT, 8192, T, 64), nx.rmsnorm(x, norm))
    run(emu, Instruction(Opcode.ADD, src0_buf=ACT, src0_addr=0, src1_buf=ACT, src1_addr=4096, dst_buf=ACT,
                         dst_addr=8192, cols=64))
    np.testing.assert_array_equal(emu.read_act32(ACT, 8192, T, 64), nx.residual_add(x, y))
    run(emu, Instruction(Opcode.SILU_MUL, src0_buf=ACT, src0_addr=0, src1_buf=ACT, src1_addr=4096, dst_buf=ACT,
                         dst_addr=8192, cols=64))
    np.testing.assert_array_equal(emu.read_act32(ACT, 8192, T, 64), nx.multiply(nx.silu(x), y))
    run(emu, Instruction(Opcode.REQUANT, src0_buf=ACT, src0_addr=0, dst_buf=ACT, dst_addr=8192, cols=64))
    got, want = emu.read_a8(ACT, 8192, T, a8_stride(64), 0, 64), nx.requantize_per_token(x)
    for field in ("codes", "scale_mantissa", "scale_exponent"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


def test_rope_rotates_every_head(emu, rng):
    d = 16
    x = act32(rng, T, 4 * d)
    cos, sin = nx.rope_tables(1.0 / 10000 ** (np.arange(d // 2) / (d // 2)), np.arange(3, 3 + T))
    emu.write_act32(ACT, 0, x)
    emu.write_act32(int(Buffer.WGT), 0, np.concatenate([cos, sin], axis=1))
    run(emu, Instruction(Opcode.ROPE, src0_buf=ACT, src0_addr=0, src1_buf=Buffer.WGT, src1_addr=0, dst_buf=ACT,
                         dst_addr=0, cols=4 * d, depth=d))
    want = nx.apply_rope(x.reshape(T, 4, d).transpose(1, 0, 2), cos, sin).transpose(1, 0, 2).reshape(T, -1)
    np.testing.assert_array_equal(emu.read_act32(ACT, 0, T, 4 * d), want)


@pytest.mark.parametrize(("bits", "mode"), [(2, GemmMode.GEMV_SPARSE), (4, GemmMode.GEMM), (8, GemmMode.GEMV)])
def test_gemm_tile_equals_numerics_linear(emu, rng, bits, mode):
    n, k, g = 24, 64, 32
    sparse = GemmMode(mode).sparse
    codes = rng.integers(0, 1 << bits, (n, k // 2 if sparse else k))
    zeros = rng.integers(0, 1 << bits, (n, k // g))
    scales = rng.uniform(1e-3, 1e-1, (n, k // g)).astype(np.float16).astype(np.float32)
    patterns = rng.integers(0, 6, (n, k // 4)) if sparse else None
    weight = nx.prepare_weight(codes, scales, zeros, g, patterns)
    shape = TileShape(n, k, g, bits, sparse, False)
    emu.put(int(Buffer.WGT), 0, np.frombuffer(pack_tile(shape, codes, zeros, weight.scale_mantissa,
                                                         weight.row_shift, patterns), dtype=np.uint8))
    act = nx.requantize_per_token(act32(rng, T, k))
    emu.write_a8(ACT, 0, act)
    inst = Instruction(Opcode.GEMM, mode=mode, flags=int(Flag.ACC_FIRST | Flag.ACC_LAST), sub=bits, src0_buf=ACT,
                       src0_addr=0, imm=a8_stride(k) << 16, src1_buf=Buffer.WGT, src1_addr=0, dst_buf=ACT,
                       dst_addr=8192, stride=4 * n, cols=n, depth=k, aux=g)
    run(emu, inst)
    np.testing.assert_array_equal(emu.read_act32(ACT, 8192, T, n), nx.linear(act, weight))


@pytest.mark.parametrize(("group", "peak"), [(64, 3), (576, 255), (128, 255)])
def test_prepared_tile_is_exact_at_the_float32_limit(rng, group, peak):
    """All codes at +-127 and weights at the extreme: group sums beyond 2**24 are split into slices."""
    values = rng.integers(-peak, peak + 1, (9, 2 * group))
    values[0] = peak
    weight = nx.IntegerWeight(values, rng.integers(1 << 15, 1 << 16, (9, 2)), rng.integers(16, 40, 9), group)
    act = nx.requantize_per_token(act32(rng, 3, 2 * group))
    act = nx.ActCodes(np.where(np.arange(2 * group) % 2, 127, -127)[None].repeat(3, 0), act.scale_mantissa,
                      act.scale_exponent)
    tile = PreparedTile(weight)
    assert (group // tile.parts) * 127 * peak < 1 << 24
    np.testing.assert_array_equal(finish_rows(tile.row_sums(act.codes), act, weight.row_shift), nx.linear(act, weight))


@pytest.mark.parametrize("mode", [KvMode.KV4_TOKEN, KvMode.KV4_CHANNEL, KvMode.ACT32])
def test_kv_quant_then_attention_equal_numerics(emu, rng, mode):
    """Two KV_QUANT calls (positions 0..4 and 5..9, crossing a 8-token block) and an ATTENTION of
    the second chunk: the same integers as kv4_quantize/dequantize + attention."""
    kv, heads, d, block = 2, 4, 16, 8
    lay = KvStreamLayout(mode, 32, kv, d, block)
    keys_at, values_at = 0, 1 << 16
    chunks = [act32(rng, T, kv * d, bits=20) for _ in range(2)]
    for position, chunk in zip((0, T), chunks):
        emu.write_act32(ACT, 0, chunk)
        for base in (keys_at, values_at):
            run(emu, Instruction(Opcode.KV_QUANT, mode=mode, src0_buf=ACT, src0_addr=0, dst_buf=Buffer.KV,
                                 dst_addr=base, cols=kv * d, depth=d, aux=block, imm=lay.capacity), position)
    q = act32(rng, T, heads * d)
    emu.write_act32(ACT, 0, q)
    run(emu, Instruction(Opcode.ATTENTION, mode=int(mode) | int(mode) << 2, src0_buf=ACT, src0_addr=0,
                         src1_buf=Buffer.KV, src1_addr=keys_at, stride=values_at, dst_buf=ACT, dst_addr=8192,
                         cols=heads * d, depth=d, sub=kv, aux=block, imm=lay.capacity), T)
    stream = np.concatenate(chunks).reshape(2 * T, kv, d).transpose(1, 0, 2)  # [KV, 10, D]
    if mode is KvMode.KV4_TOKEN:
        stored = nx.kv4_dequantize(nx.kv4_quantize(stream, axis=-1))
    elif mode is KvMode.KV4_CHANNEL:  # one finished block of 8, two tokens still staged in ACT32
        stored = np.concatenate([nx.kv4_dequantize(nx.kv4_quantize(stream[:, :block], axis=1)), stream[:, block:]], 1)
    else:
        stored = stream
    qh = q.reshape(T, heads, d).transpose(1, 0, 2)
    want = nx.attention(qh, stored, stored, nx.AttentionConstants.for_head_dim(d), nx.causal_visibility(T, 2 * T))
    np.testing.assert_array_equal(emu.read_act32(ACT, 8192, T, heads * d), want.transpose(1, 0, 2).reshape(T, -1))
