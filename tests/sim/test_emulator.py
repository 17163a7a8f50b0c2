"""The emulator: whole programs bit-exact against IntegerModel, and the errors a bad program or
a bad run must give."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from llmfab.compiler.isa import (
    WORD_BYTES,
    Buffer,
    Flag,
    Instruction,
    IsaError,
    Opcode,
    Registers,
    decode_program,
    encode_program,
    hbm_row,
    transfer_runs,
)
from llmfab.compiler.model_plan import reference_integer_model
from llmfab.compiler.program import ProgramError, load_program
from llmfab.sim.emulator import Emulator, EmulatorError
from llmfab.tests.fixtures.tiny_models import TINY_CONFIGS, write_tiny_hf_folder
from llmfab.tests.sim.emulator_fixtures import DENSE_W4, SPARSE_W2, W8_KV8, compile_artifact, engine, tiny_artifact


@pytest.fixture(scope="module")
def sparse_artifact(tiny_hf_folder, tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("art") / "sparse", tiny_hf_folder, SPARSE_W2)


@pytest.fixture(scope="module")
def tiny(sparse_artifact, tmp_path_factory):
    """(artifact, compiled, program) with a small activation buffer, so the prefill chunk is short."""
    return compile_artifact(sparse_artifact, tmp_path_factory.mktemp("prog") / "tiny",
                            engine(activation_buffer_bytes=24 * 1024))


def run_and_compare(artifact, program, ids, chunk: int, decode_steps: int, emu: Emulator | None = None) -> None:
    """Prefill ``ids`` in chunks of ``chunk``, then decode; every logit equals IntegerModel's."""
    emu = emu or Emulator(program)
    emu.reset()
    reference = reference_integer_model(artifact)
    cache = reference.new_cache()
    position = 0
    prompt, rest = ids[:-decode_steps], ids[-decode_steps:]
    while position < len(prompt):
        part = prompt[position:position + chunk]
        emu.write_tokens(part)
        stats = emu.start("prefill", len(part), position)
        assert stats.instructions["END"] == 1 and stats.bytes["GEMM"] > 0
        np.testing.assert_array_equal(emu.read_logits(len(part)), reference.forward(part, cache))
        position += len(part)
    for token in rest:
        emu.write_tokens([token])
        emu.start("decode", 1, position)
        np.testing.assert_array_equal(emu.read_logits(1), reference.forward([token], cache))
        position += 1


def test_prompt_longer_than_a_chunk_then_decode_is_bit_exact(tiny):
    artifact, compiled, program = tiny
    chunk = program.limits.max_prefill_tokens
    assert 4 <= chunk < 20  # the small activation buffer forces several chunks
    ids = np.random.default_rng(0).integers(0, program.limits.vocab_size, 2 * chunk + 3 + 4)
    run_and_compare(artifact, program, ids, chunk, decode_steps=4)


def test_dense_w4_with_k_split_tiles_is_bit_exact(tmp_path):
    """A weight buffer too small for a whole input row of down_proj (K = 2048) splits K: its GEMMs
    accumulate across tiles."""
    config = dict(TINY_CONFIGS["gqa-llama3"], intermediate_size=2048, num_hidden_layers=1)
    hf_folder = write_tiny_hf_folder(tmp_path / "hf", config)
    artifact_folder = tiny_artifact(tmp_path / "w4", hf_folder, DENSE_W4)
    hardware = engine(weight_buffer_bytes=3 * 1024, activation_buffer_bytes=64 * 1024)
    artifact, compiled, program = compile_artifact(artifact_folder, tmp_path / "prog", hardware)
    assert compiled.memory.tilings["down_proj"].k_split and not compiled.memory.tilings["q_proj"].k_split
    ids = np.random.default_rng(1).integers(0, program.limits.vocab_size, 12)
    run_and_compare(artifact, program, ids, program.limits.max_prefill_tokens, decode_steps=3)


def test_w8_weights_with_a_kv8_cache_are_bit_exact(tiny_hf_folder, tmp_path):
    artifact_folder = tiny_artifact(tmp_path / "w8", tiny_hf_folder, W8_KV8)
    artifact, compiled, program = compile_artifact(artifact_folder, tmp_path / "prog", engine())
    assert compiled.plan.kv_bits == 8
    ids = np.random.default_rng(2).integers(0, program.limits.vocab_size, 40)  # crosses a 32-token key block
    run_and_compare(artifact, program, ids, program.limits.max_prefill_tokens, decode_steps=3)


@pytest.mark.parametrize(("keys", "sinks", "window"), [("per-channel", 4, 40), ("per-token", 3, 12)])
def test_lambda_cache_past_several_ring_wraps_is_bit_exact(tiny_hf_folder, tmp_path, keys, sinks, window):
    """Λ attention (S sinks + W window; per-channel keys in blocks of 32 with W = 40, whose window
    store holds partial blocks) over a stream longer than S + W, in uneven prefill chunks and decode
    steps: the same logits as IntegerModel's Λ cache."""
    formats = dict(recipe=dict(preset="accllm", group_size=32, zero_point="half-integer", sinks=sinks,
                               window=window, kv_key_granularity=keys), rtn=SPARSE_W2["rtn"])
    artifact_folder = tiny_artifact(tmp_path / "lambda", tiny_hf_folder, formats)
    artifact, compiled, program = compile_artifact(artifact_folder, tmp_path / "prog",
                                                   engine(activation_buffer_bytes=24 * 1024))
    assert program.limits.max_context is None and program.limits.window == window
    chunk = program.limits.max_prefill_tokens
    ids = np.random.default_rng(3).integers(0, program.limits.vocab_size, 2 * (sinks + window) + 6)
    run_and_compare(artifact, program, ids, chunk - 3, decode_steps=8)


class PoisonedKvEmulator(Emulator):
    """Fills the KV buffer with random bytes before each layer's KV LOADs, so a result that reads a
    byte that no LOAD of the layer brought in (nor its KV_QUANT wrote) differs from the reference.
    Counts the RING transfers that wrapped their ring (two runs of rows)."""

    def __init__(self, program, seed: int = 0):
        super().__init__(program)
        self.rng = np.random.default_rng(seed)
        self.previous_was_kv_load = False
        self.wrapped = Counter()

    def execute(self, inst):
        kv_load = inst.opcode is Opcode.LOAD and inst.buf == Buffer.KV
        if kv_load and not self.previous_was_kv_load:
            kv = self.buffers[Buffer.KV]
            kv[:] = self.rng.integers(0, 256, kv.size, dtype=np.uint8)
        self.previous_was_kv_load = kv_load
        if inst.flags & Flag.RING and len(transfer_runs(inst, self.registers)) == 2:
            self.wrapped[inst.opcode.name] += 1
        return super().execute(inst)


@pytest.mark.parametrize(("keys", "sinks", "window"), [("per-channel", 4, 40), ("per-token", 3, 12),
                                                       ("per-channel", 3, 12)])
def test_lambda_transfers_bring_in_every_byte_the_layer_reads(tiny_hf_folder, tmp_path, keys, sinks, window):
    """The Λ LOADs move only the slots a run still reads and the STOREs only those it changed (RING
    row ranges that follow the ring slots of the positions): with the KV buffer filled with random
    bytes before every layer's LOADs, prefill chunks that wrap the rings and decode steps still give
    IntegerModel's logits. (4, 40): 32-token key blocks addressed by shifts; (3, 12): per-token keys,
    and per-channel keys whose blocks (3 sinks, 12 window tokens) are moved whole."""
    formats = dict(recipe=dict(preset="accllm", group_size=32, zero_point="half-integer", sinks=sinks,
                               window=window, kv_key_granularity=keys), rtn=SPARSE_W2["rtn"])
    artifact_folder = tiny_artifact(tmp_path / "lambda", tiny_hf_folder, formats)
    artifact, compiled, program = compile_artifact(artifact_folder, tmp_path / "prog",
                                                   engine(activation_buffer_bytes=24 * 1024))
    chunk = program.limits.max_prefill_tokens
    ids = np.random.default_rng(4).integers(0, program.limits.vocab_size, 3 * (sinks + window + chunk) + 5)
    emu = PoisonedKvEmulator(program)
    run_and_compare(artifact, program, ids, chunk - 1, decode_steps=2 * chunk + 3, emu=emu)
    assert emu.wrapped["STORE"] > 0 and emu.wrapped["LOAD"] > 0  # some chunks and windows wrapped their ring
    # what the emulator keeps between runs (transfer plans, region views, tile shapes) holds no data:
    # after reset() a new sequence in other chunks gives the reference's logits again
    emu.reset()
    run_and_compare(artifact, program, ids[::-1], chunk, decode_steps=3, emu=emu)


def test_transfer_views_move_the_rows_a_row_by_row_copy_moves():
    """LOAD/STORE through the emulator's cached views (one array per run, striped runs split into a
    partial lane group, whole lane groups and a partial one) equal copying row by row with
    compiler.isa.hbm_row, for random starts, counts, strides, striping and BUF_AT_START."""
    rng = np.random.default_rng(1)
    pcs, size = 8, 3000
    for _ in range(400):
        emu = Emulator.__new__(Emulator)  # only the state transfers use
        emu._init_buffers({Buffer.WGT: 4096, Buffer.ACT: 4096, Buffer.KV: 4096, Buffer.OUT: 4096})
        emu.used, emu.image_bytes = np.full(pcs, size), np.full(pcs, 100)
        emu.hbm_lanes = rng.integers(0, 256, (pcs, size), dtype=np.uint8)
        emu.hbm = list(emu.hbm_lanes)
        emu.registers = Registers(int(rng.integers(0, 12)), int(rng.integers(1, 12)))
        sub = int(rng.integers(2, 5)) if rng.random() < 0.7 else 0
        rb = int(rng.integers(1, 20))
        flags = (int(Flag.STRIPED) if sub else 0) | (int(Flag.BUF_AT_START) if rng.random() < 0.3 else 0)
        inst = Instruction(Opcode.LOAD if rng.random() < 0.5 else Opcode.STORE, flags=flags, sub=sub,
                           buf=int(Buffer.ACT), buf_addr=int(rng.integers(0, 200)),
                           pc=int(rng.integers(0, pcs - max(sub, 1) + 1)), hbm_offset=int(rng.integers(0, 300)),
                           row_bytes=rb, hbm_stride=int(rng.integers(rb, 3 * rb + 1)),
                           buf_stride=int(rng.integers(rb, 3 * rb + 1)), rows=int(rng.integers(1, 30)),
                           rows_src=int(rng.integers(0, 4)), start_src=int(rng.integers(0, 2)))
        emu.instructions, emu.current = [inst], 0
        runs = transfer_runs(inst, emu.registers)
        if not runs:
            continue
        memory = emu.buffers[Buffer.ACT]
        memory[:] = rng.integers(0, 256, memory.size, dtype=np.uint8)
        want_buf, want_hbm = memory.copy(), [m.copy() for m in emu.hbm]
        base = inst.buf_addr - (0 if flags & int(Flag.BUF_AT_START) else runs[0][0] * inst.buf_stride)
        for start, count in runs:
            for row in range(start, start + count):
                pc, offset = hbm_row(inst, row)
                at = base + row * inst.buf_stride
                if inst.opcode is Opcode.LOAD:
                    want_buf[at:at + rb] = want_hbm[pc][offset:offset + rb]
                else:
                    want_hbm[pc][offset:offset + rb] = want_buf[at:at + rb]
        emu.transfer(inst)
        assert np.array_equal(memory, want_buf), inst
        assert all(np.array_equal(got, want) for got, want in zip(emu.hbm, want_hbm)), inst


def test_stats_count_instructions_and_bytes(tiny):
    _, compiled, program = tiny
    emu = Emulator(program)
    emu.write_tokens([5])
    stats = emu.start("decode", 1, 0)
    entry = compiled.entries["decode"]
    assert stats.total_instructions == entry["count"]
    assert stats.instructions["GEMM"] == sum(i.opcode is Opcode.GEMM for i in
                                             compiled.instructions[entry["entry"]:entry["entry"] + entry["count"]])
    assert stats.bytes["LOAD"] > 0 and stats.bytes["STORE"] > 0


def test_run_limits(tiny):
    _, _, program = tiny
    emu = Emulator(program)
    chunk = program.limits.max_prefill_tokens
    with pytest.raises(ProgramError, match=f"takes 1 to {chunk} tokens"):
        emu.start("prefill", chunk + 1, 0)
    with pytest.raises(ProgramError, match="input region holds at most"):
        emu.write_tokens(np.zeros(chunk + 1, dtype=np.int64))
    with pytest.raises(ProgramError, match="exceed the program's context"):
        emu.start("decode", 1, program.limits.max_context)
    with pytest.raises(ProgramError, match="must continue the sequence"):
        emu.start("decode", 1, 3)
    with pytest.raises(ProgramError, match="token ids must lie"):
        emu.write_tokens([program.limits.vocab_size])


def rewrite_instructions(folder, change) -> None:
    """Apply ``change`` to the decoded instruction list and fix the checksum, as a buggy compiler would."""
    import hashlib

    path = folder / "instructions.bin"
    data = change(bytearray(path.read_bytes()))
    path.write_bytes(bytes(data))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["instructions.bin"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def copy_program(program, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(program.folder, folder)
    return folder


def test_unknown_opcode_names_its_address(tiny, tmp_path):
    folder = copy_program(tiny[2], tmp_path)

    def corrupt(data):
        data[7 * WORD_BYTES] = 0x77
        return data

    rewrite_instructions(folder, corrupt)
    with pytest.raises(IsaError, match=r"instruction 7 \(byte offset 224\): unknown opcode 0x77"):
        Emulator(load_program(folder))


def test_pop_without_push_is_a_deadlock_naming_the_instruction(tiny, tmp_path):
    folder = copy_program(tiny[2], tmp_path)
    entry = tiny[2].manifest["routines"]["decode"]["entry"]
    instructions = decode_program((folder / "instructions.bin").read_bytes())
    victim = next(i for i in range(entry, len(instructions))
                  if instructions[i].opcode is Opcode.RMSNORM and not instructions[i].pop_next)

    def add_pop(data):
        instructions[victim] = instructions[victim].replace(pop_next=1)
        return bytearray(encode_program(instructions))

    rewrite_instructions(folder, add_pop)
    emu = Emulator(load_program(folder))
    emu.write_tokens([1])
    with pytest.raises(EmulatorError, match=rf"instruction {victim} \(RMSNORM\): pops the store->compute token queue"):
        emu.start("decode", 1, 0)


def test_buffer_overflow_is_an_error(tiny, tmp_path):
    folder = copy_program(tiny[2], tmp_path)
    entry = tiny[2].manifest["routines"]["decode"]["entry"]
    instructions = decode_program((folder / "instructions.bin").read_bytes())
    victim = next(i for i in range(entry, len(instructions)) if instructions[i].opcode is Opcode.ADD)
    act_bytes = tiny[2].hardware.engine.activation_buffer_bytes

    def move(data):
        instructions[victim] = instructions[victim].replace(dst_addr=act_bytes - 8)
        return bytearray(encode_program(instructions))

    rewrite_instructions(folder, move)
    emu = Emulator(load_program(folder))
    emu.write_tokens([1])
    with pytest.raises(EmulatorError, match=rf"instruction {victim} \(ADD\): bytes .* of the ACT buffer, which holds"):
        emu.start("decode", 1, 0)


@pytest.mark.slow
def test_smollm2_compiles_and_emulates_bit_exact(tmp_path):
    """SmolLM2-135M in the accllm formats (RTN 2:4 W2 with half-integer zero points, KV4 cache, Λ
    attention with 4 sinks and a 1024 window) on u280-default."""
    from llmfab.quant.checkpoint import load_checkpoint
    from llmfab.quant.model import LlamaModel
    from llmfab.quant.recipe import Recipe
    from llmfab.quant.artifact import save_artifact
    from llmfab.sim.integer_weights import round_to_nearest_model

    checkpoint = load_checkpoint("smollm2-135m")
    model = round_to_nearest_model(LlamaModel.from_checkpoint(checkpoint), bits=2, group_size=64, sparse=True,
                                   zero_halves=True)
    recipe = Recipe.from_preset("accllm", zero_point="half-integer")
    save_artifact(tmp_path / "art", model, recipe, checkpoint.tokenizer, model_name="smollm2-135m")
    artifact, _, program = compile_artifact(tmp_path / "art", tmp_path / "prog", engine())
    ids = np.array(checkpoint.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 8))[:40]
    run_and_compare(artifact, program, ids, program.limits.max_prefill_tokens, decode_steps=3)
