"""The A16 LM head (recipe head_act_bits 16) through ISA, compiler and emulator: REQUANT's A16 mode
and GEMM's A16 flag against the numerics library, and a compiled tiny model emulated bit-exact
against IntegerModel (docs/isa.md "A16 rows", docs/numerics.md §3.1, §4.3)."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import ActWidth, Buffer, Flag, GemmMode, Instruction, Opcode, Registers, RowSource
from llmfab.compiler.memory_plan import a8_stride, act_row_stride
from llmfab.compiler.model_plan import reference_integer_model
from llmfab.compiler.weight_tiles import TileShape, pack_tile
from llmfab.sim import numerics as nx
from llmfab.sim.emulator import Emulator
from llmfab.sim.emulator_ops import read_a16
from llmfab.tests.sim.emulator_fixtures import DENSE_W4, compile_artifact, engine, tiny_artifact
from llmfab.tests.sim.test_emulator import run_and_compare

T = 5
ACT = int(Buffer.ACT)
A16_HEAD_W4 = dict(recipe=dict(DENSE_W4["recipe"], head_act_bits=16), rtn=DENSE_W4["rtn"])


@pytest.fixture(scope="module")
def a16_tiny(tiny_hf_folder, tmp_path_factory):
    """(artifact, compiled, program) of a dense W4 tiny model with an A16 head; a small activation
    buffer, so prefill runs in several chunks."""
    folder = tmp_path_factory.mktemp("a16")
    artifact_folder = tiny_artifact(folder / "art", tiny_hf_folder, A16_HEAD_W4)
    return compile_artifact(artifact_folder, folder / "prog", engine(activation_buffer_bytes=24 * 1024))


def run(emu, inst: Instruction) -> None:
    emu.registers = Registers(T, 0)
    emu.execute(inst.replace(rows_src=RowSource.TOKENS))


def test_a16_rows_stride():
    assert act_row_stride(576, ActWidth.A8) == a8_stride(576) == 8 + 576
    assert act_row_stride(576, ActWidth.A16) == 8 + 2 * 576 and act_row_stride(3, ActWidth.A16) == 16
    assert ActWidth.A16.bits == 16 and ActWidth.A8.bits == 8


def test_requant_a16_and_gemm_a16_equal_numerics(a16_tiny):
    """REQUANT mode A16 writes int16 rows; GEMM with flag A16 reads them (W8 tile, codes at ±32767 and
    weights at ±255 in a 576-wide group: the group sums pass the float32 limit and 32 bits)."""
    emu = Emulator(a16_tiny[2])
    rng = np.random.default_rng(3)
    n, k, g, bits = 16, 576, 576, 8
    x = rng.integers(-(1 << 26), 1 << 26, (T, k))
    x[0] = np.where(np.arange(k) % 2, 1 << 26, -(1 << 26))  # every code at ±32767
    emu.write_act32(ACT, 0, x)
    run(emu, Instruction(Opcode.REQUANT, mode=int(ActWidth.A16), src0_buf=ACT, src0_addr=0, dst_buf=ACT,
                         dst_addr=12288, cols=k))
    stride = act_row_stride(k, ActWidth.A16)
    got, want = read_a16(emu, ACT, 12288, T, stride, 0, k), nx.requantize_per_token(x, bits=16)
    assert got.bits == 16 and np.abs(got.codes[0]).min() == 32767
    for field in ("codes", "scale_mantissa", "scale_exponent"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    codes = rng.integers(0, 256, (n, k))
    codes[0] = np.where(np.arange(k) % 2, 255, 0)
    zeros = np.where(np.arange(n) == 0, 0, rng.integers(0, 256, n))[:, None]
    scales = rng.uniform(1e-4, 1e-3, (n, 1)).astype(np.float16).astype(np.float32)
    weight = nx.prepare_weight(codes, scales, zeros, g)
    emu.put(int(Buffer.WGT), 0, np.frombuffer(pack_tile(TileShape(n, k, g, bits, False, False), codes, zeros,
                                                         weight.scale_mantissa, weight.row_shift), dtype=np.uint8))
    gemm = Instruction(Opcode.GEMM, mode=GemmMode.GEMV, flags=int(Flag.ACC_FIRST | Flag.ACC_LAST | Flag.A16), sub=bits,
                       src0_buf=ACT, src0_addr=12288, imm=stride << 16, src1_buf=Buffer.WGT, src1_addr=0,
                       dst_buf=ACT, dst_addr=18432, stride=4 * n, cols=n, depth=k, aux=g)
    run(emu, gemm)
    np.testing.assert_array_equal(emu.read_act32(ACT, 18432, T, n), nx.linear(want, weight))
    assert nx.group_sums(want.codes, weight, 16).max() >= 1 << 31  # beyond the int8 path's signed 32-bit accumulator
    # the same rows read as A8 (flag off) would be wrong: the flag is what selects the row format
    run(emu, gemm.replace(flags=int(Flag.ACC_FIRST | Flag.ACC_LAST)))
    assert not np.array_equal(emu.read_act32(ACT, 18432, T, n), nx.linear(want, weight))


def test_program_marks_only_the_head_as_a16(a16_tiny):
    artifact, compiled, program = a16_tiny
    assert compiled.plan.head_act_width is ActWidth.A16
    c = compiled.plan.config
    for routine, entry in compiled.entries.items():
        insts = compiled.instructions[entry["entry"]:entry["entry"] + entry["count"]]
        requants = [i for i in insts if i.opcode == Opcode.REQUANT]
        assert [i.mode for i in requants].count(ActWidth.A16) == 1 and requants[-1].mode == ActWidth.A16, routine
        gemms = [i for i in insts if i.opcode == Opcode.GEMM]
        head = [i for i in gemms if i.flags & Flag.A16]
        assert head and all(i.imm >> 16 == act_row_stride(c.hidden_size, ActWidth.A16) for i in head)
        assert sum(i.cols for i in head if i.flags & Flag.ACC_LAST) == c.vocab_size  # the head's tiles, no more
        assert all(i.src0_addr == requants[-1].dst_addr for i in head)
    addr, nbytes = compiled.memory.act.regions["a8_h"]
    assert nbytes >= program.limits.max_prefill_tokens * act_row_stride(c.hidden_size, ActWidth.A16)


def test_a16_head_program_is_bit_exact_against_integer_model(a16_tiny):
    artifact, compiled, program = a16_tiny
    assert reference_integer_model(artifact).head_act_bits == 16
    chunk = program.limits.max_prefill_tokens
    ids = np.random.default_rng(0).integers(0, program.limits.vocab_size, chunk + 5 + 3)
    run_and_compare(artifact, program, ids, chunk, decode_steps=3)
