"""The cycle model's as-built datapath (sim/rtl_timing.py): it covers every COMPUTE opcode, maps the
instruction fields onto the RTL sequencers' formulas, and its grouped MEMORY timing equals the
row-by-row sum. The agreement with the RTL itself is asserted by the whole-engine test
(tests/rtl/engine/test_engine_model.py, slow) and per sequencer by tests/rtl/engine/test_seq_*.py."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import Buffer, Flag, GemmMode, Instruction, Opcode, Registers, RowSource, is_memory
from llmfab.rtl.engine import memory_unit
from llmfab.rtl.engine.compute_unit import DISPATCH_CYCLES
from llmfab.rtl.engine.geometry import EngineGeometry
from llmfab.rtl.engine.issue import START_CYCLES
from llmfab.rtl.engine.seq_requant import RequantSequencer
from llmfab.rtl.engine.seq_rmsnorm import RmsNormSequencer
from llmfab.rtl.engine.seq_rope import RopeSequencer
from llmfab.sim import op_timing, rtl_timing
from llmfab.sim.op_timing import Datapath

TINY = HardwareConfig.from_preset("u280-rtl-tiny")
SMALL = HardwareConfig.from_preset("u280-small")
OVERHEAD = START_CYCLES + DISPATCH_CYCLES


def test_every_compute_opcode_has_an_rtl_formula():
    compute = {op for op in Opcode if not is_memory(op) and op is not Opcode.END}
    assert set(rtl_timing.RTL_CYCLES) == compute


@pytest.mark.parametrize("tokens", [1, 5])
def test_row_opcodes_take_their_sequencer_formula_with_the_runtime_rows(tokens):
    lanes = EngineGeometry.from_config(TINY).sfu_lanes
    regs = Registers(n_tokens=tokens, position=0)
    cases = {
        Instruction(Opcode.RMSNORM, rows_src=RowSource.TOKENS, cols=32, src1_addr=64): RmsNormSequencer.cycles(
            tokens, 32, lanes, 64),
        Instruction(Opcode.REQUANT, rows_src=RowSource.TOKENS, cols=48): RequantSequencer.cycles(tokens, 48, lanes),
        Instruction(Opcode.ROPE, rows_src=RowSource.TOKENS, cols=64, depth=16): RopeSequencer.cycles(
            tokens, 64, 16, lanes),
    }
    for inst, sequencer in cases.items():
        assert op_timing.op_cost(inst, regs, TINY, datapath=Datapath.RTL).cycles == sequencer + OVERHEAD


def test_a_gemv_wider_than_a_buffer_word_runs_at_the_word_rate():
    # u280-small: 1,024 decode lanes, 64-byte buffer words = 256 2-bit or 64 8-bit codes per read.
    def gemv(bits):
        inst = Instruction(Opcode.GEMM, mode=GemmMode.GEMV, rows=1, cols=64, depth=4096, aux=64, sub=bits,
                           flags=int(Flag.ACC_FIRST | Flag.ACC_LAST))
        return op_timing.op_cost(inst, Registers(1, 0), SMALL, datapath=Datapath.RTL).cycles
    two, eight = gemv(2), gemv(8)
    assert 64 * 4096 / 256 <= two < 1.1 * 64 * 4096 / 256
    assert eight - two == 3 * 64 * 4096 // 256  # 4x the reads, the same fixed cycles


def _row_by_row(inst, regs, config):
    """memory_cycles' rows one entry each (no grouping), for comparison."""
    geometry = EngineGeometry.from_config(config)
    from llmfab.compiler.isa import transfer_runs

    sub = inst.sub if inst.flags & Flag.STRIPED and inst.sub > 1 else 1
    rows = [r for first, count in transfer_runs(inst, regs) for r in range(first, first + count)]
    entries = [(i, inst.pc + r % sub, inst.hbm_offset + (r // sub) * inst.hbm_stride,
                inst.buf_addr + (r if inst.flags & Flag.BUF_AT_START else i) * inst.buf_stride, inst.row_bytes, 1)
               for i, r in enumerate(rows)]
    setup = memory_unit.divide_cycles(rows[0] if rows else 0, sub) if sub > 1 else 0
    kind = "store" if inst.opcode is Opcode.STORE else "load"
    return memory_unit.transfer_cycles(kind, entries, beat_bytes=geometry.axi_data_width // 8,
                                       word_bytes=geometry.word_bytes, read_latency=5, setup=setup)


def test_grouped_memory_timing_equals_the_row_by_row_sum():
    rng = np.random.default_rng(7)
    for _ in range(60):
        opcode = Opcode.STORE if rng.random() < 0.4 else Opcode.LOAD
        striped = rng.random() < 0.6
        row_bytes = int(rng.integers(1, 300))
        inst = Instruction(opcode, buf=Buffer.ACT, rows=int(rng.integers(1, 40)), row_bytes=row_bytes,
                           hbm_stride=row_bytes + int(rng.integers(0, 3)) * int(rng.integers(1, 70)),
                           buf_stride=row_bytes + int(rng.integers(0, 20)), hbm_offset=int(rng.integers(0, 200)),
                           buf_addr=int(rng.integers(0, 100)), flags=int(Flag.STRIPED) if striped else 0,
                           sub=int(rng.integers(2, 5)) if striped else 0, pc=0)
        regs = Registers(1, 0)
        assert rtl_timing.memory_cycles(inst, regs, TINY, 5) == _row_by_row(inst, regs, TINY), inst


def test_an_empty_transfer_still_takes_the_units_fixed_cycles():
    inst = Instruction(Opcode.LOAD, buf=Buffer.ACT, rows_src=RowSource.TOKENS, row_bytes=64, hbm_stride=64, buf_stride=64)
    assert rtl_timing.memory_cycles(inst, Registers(0, 0), TINY, 5) == memory_unit.EMPTY_CYCLES
