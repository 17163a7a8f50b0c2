"""RING transfers (compiler/isa.py: ring_part, align_shift, split_shift, start_src WINDOW) on the engine,
against a byte model built from `isa.transfer_runs` and `isa.hbm_row` (the emulator moves Λ regions
whole and does not take RING transfers yet)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmfab.compiler import isa
from llmfab.compiler.isa import Buffer, Flag, Instruction, Opcode, Registers, RowSource, StartSource
from llmfab.rtl.sim_runner import missing_tool
from llmfab.tests.rtl.engine.engine_harness import Run, run_engine
from llmfab.tests.rtl.engine.programs import region, tiny_hardware, write_program
from llmfab.tests.rtl.engine.test_engine import small_engine

HAS_RING = hasattr(isa, "RingPart") and hasattr(isa, "transfer_runs")
KV, ACT = int(Buffer.KV), int(Buffer.ACT)
SINKS, WINDOW = 2, 3
IMAGE, USED = 1024, 2048


def ring_program() -> list[Instruction]:
    ring = int(Flag.RING) | int(Flag.BUF_AT_START)
    ctx = int(RowSource.CONTEXT)
    return [
        # positions P .. P+T-1 into a ring of 5 slots of 2 rows each, rows striped over both ports
        Instruction(Opcode.LOAD, flags=ring | int(Flag.STRIPED), sub=2, rows_src=ctx, start_src=int(StartSource.HISTORY),
                    rows=5, split_shift=1, pc=0, hbm_offset=100, hbm_stride=16, row_bytes=13, buf=KV, buf_addr=0,
                    buf_stride=16, push_next=1),
        Instruction(Opcode.ADD, pop_prev=1, push_next=1, rows=0, cols=2, src0_buf=ACT, src1_buf=ACT, dst_buf=ACT),
        # the window part from its oldest visible token, aligned down to 2 positions, blocks of 2, rounded up
        Instruction(Opcode.STORE, pop_prev=1, flags=ring, rows_src=ctx, start_src=int(StartSource.WINDOW),
                    ring_part=int(isa.RingPart.WINDOW), align_shift=1, block_shift=1, end_ceil=1, rows=4, pc=1,
                    hbm_offset=500, hbm_stride=20, row_bytes=15, buf=KV, buf_addr=3, buf_stride=16),
        # the sinks, no wrap (rows 0)
        Instruction(Opcode.STORE, flags=ring, rows_src=ctx, ring_part=int(isa.RingPart.SINKS), rows=0, pc=0,
                    hbm_offset=700, hbm_stride=13, row_bytes=13, buf=KV, buf_addr=0, buf_stride=16),
        # the whole mirror, to see the buffer
        Instruction(Opcode.STORE, rows=1, pc=0, hbm_offset=1200, hbm_stride=0, row_bytes=160, buf=KV, buf_addr=0,
                    buf_stride=0, push_prev=1),
        Instruction(Opcode.END, pop_next=1),
    ] if HAS_RING else []


def model(instructions, runs, images: dict[int, bytes], kv_bytes: int) -> list[list[bytes]]:
    """Apply the MEMORY instructions in program order (the tokens order them so) to byte arrays."""
    hbm = [np.zeros(USED, np.uint8) for _ in range(2)]
    for pc, image in images.items():
        hbm[pc][:len(image)] = np.frombuffer(image, np.uint8)
    kv = np.zeros(kv_bytes, np.uint8)
    out = []
    for run in runs:
        regs = Registers(run.n_tokens, run.position, SINKS, WINDOW, 4)
        for inst in instructions:
            if not isa.is_memory(inst.opcode):
                continue
            for first, count in isa.transfer_runs(inst, regs):
                for r in range(first, first + count):
                    pc, offset = isa.hbm_row(inst, r)
                    at = inst.buf_addr + r * inst.buf_stride
                    n = inst.row_bytes
                    if inst.opcode is Opcode.LOAD:
                        kv[at:at + n] = hbm[pc][offset:offset + n]
                    else:
                        hbm[pc][offset:offset + n] = kv[at:at + n]
        out.append([bytes(m) for m in hbm])
    return out


@pytest.mark.sim
@pytest.mark.skipif(not HAS_RING, reason="compiler/isa.py has no RING transfer fields")
@pytest.mark.skipif(missing_tool("icarus") is not None, reason=str(missing_tool("icarus")))
def test_ring_transfers_wrap_like_transfer_runs(tmp_path):
    instructions = ring_program()
    rng = random.Random(8)
    images = {pc: rng.randbytes(IMAGE) for pc in range(2)}
    program = write_program(tmp_path / "program", tiny_hardware(), instructions, {"prefill": (0, len(instructions))},
                            images, {0: USED, 1: USED}, input_ids=region(0, 0, 4, 4, 4),
                            logits=region(0, 1200, 1, 160, 160, kind="output"), sinks=SINKS, window=WINDOW)
    runs = [Run("prefill", 3, 0), Run("prefill", 3, 3), Run("prefill", 4, 6), Run("prefill", 1, 10)]
    regs = [Registers(r.n_tokens, r.position, SINKS, WINDOW) for r in runs]
    for inst in (instructions[0], instructions[2]):
        assert any(len(isa.transfer_runs(inst, g)) == 2 for g in regs), "no run wraps the ring"
    result = run_engine(program, runs, "icarus", tmp_path / "run", engine=small_engine(program.hardware))
    expected = model(instructions, runs, images, program.hardware.engine.kv_buffer_bytes)
    for i, (got, want) in enumerate(zip(result.runs, expected)):
        assert got.error is None, f"run {i}: {got.error}"
        for pc in range(2):
            a, b = np.frombuffer(got.hbm[pc], np.uint8), np.frombuffer(want[pc], np.uint8)
            bad = np.flatnonzero(a != b)
            assert not bad.size, f"run {i}: pseudo-channel {pc} byte {bad[0]}: got {a[bad[0]]}, expected {b[bad[0]]}"
