"""ADD and SILU_MUL sequencers against the emulator on random ACT32 rows, on both simulators."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import Buffer, Instruction, Opcode, Registers, RowSource
from llmfab.rtl.engine.seq_elementwise import ElementwiseSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.tests.rtl.engine.bench import Case, check
from llmfab.tests.rtl.engine.geometries import TINY

ACT, WGT = int(Buffer.ACT), int(Buffer.WGT)


def act32_bytes(rng, rows: int, cols: int, bits: int = 31) -> bytes:
    values = rng.integers(-(1 << bits), 1 << bits, (rows, cols), dtype=np.int64)
    values[0, :4] = [ -(1 << 31), (1 << 31) - 1, 0, -1]
    return values.astype("<i4").tobytes()


def cases(opcode: Opcode, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    out = []
    for index, (rows, cols, a, b, d, bits) in enumerate([(1, 16, 0, 256, 512, 31), (3, 10, 8, 520, 1024, 20),
                                                         (2, 7, 4, 132, 2052, 24), (4, 24, 1000, 1600, 1000, 31)]):
        inst = Instruction(opcode, rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=a, src1_buf=WGT if index == 2 else ACT,
                           src1_addr=b, dst_buf=ACT, dst_addr=d, cols=cols)
        out.append(Case(f"{opcode.name.lower()}{index}", inst, rows, Registers(rows, 0),
                        inputs=[(ACT, a, act32_bytes(rng, rows, cols, bits)),
                                (inst.src1_buf, b, act32_bytes(rng, rows, cols, bits))],
                        outputs=[(ACT, d, 4 * rows * cols)]))
    return out


@pytest.mark.parametrize("opcode", [Opcode.ADD, Opcode.SILU_MUL])
@pytest.mark.parametrize("simulator", simulator_params())
def test_elementwise_sequencer_equals_emulator(opcode, simulator, tmp_path):
    runs = check(ElementwiseSequencer(TINY, opcode), cases(opcode, 3), simulator, tmp_path, f"seq_{opcode.name.lower()}")
    aligned = runs[0]
    assert aligned.cycles == ElementwiseSequencer.cycles(opcode, 16, TINY.sfu_lanes)
