"""The target datapath's GEMM formula for the A16 LM head (flag A16): two passes of the decode lanes,
one of the prefill DSP array (sim/op_timing.py, docs/numerics.md §4.3). The RTL datapath's A16
timing is the GEMM sequencer's, asserted by tests/rtl/engine/test_seq_gemm.py."""

from __future__ import annotations

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.compiler.isa import Flag, GemmMode, Instruction, Opcode, Registers
from llmfab.sim import hbm_timing, op_timing

IDEAL = hbm_timing.HbmTiming(pc_efficiency=1.0, burst_gap_cycles=2.0, read_latency_ns=0.0)


def head_tile(mode: GemmMode, a16: bool) -> Instruction:
    flags = Flag.ACC_FIRST | Flag.ACC_LAST | (Flag.A16 if a16 else 0)
    return Instruction(Opcode.GEMM, mode=mode, flags=int(flags), rows=4, cols=256, depth=576, aux=576, sub=8)


def test_a16_gemv_takes_two_passes_of_the_decode_lanes():
    config = HardwareConfig.from_preset("u280-small")
    fill = op_timing.COMPUTE_PIPELINE_CYCLES
    regs = Registers(n_tokens=1, position=0)
    a8, a16 = (op_timing.op_cost(head_tile(GemmMode.GEMV, a16), regs, config, IDEAL, op_timing.Datapath.TARGET) for a16 in (False, True))
    digits = 4  # 8-bit weights in 2-bit digits
    tokens = 4  # the instruction's rows field
    assert a8.cycles - fill == tokens * -(-256 * 576 * digits // config.engine.decode_lanes)
    assert a16.cycles - fill == tokens * -(-2 * 256 * 576 * digits // config.engine.decode_lanes)
    assert a16.macs == a8.macs == tokens * 256 * 576 and a16.mode is Mode.DECODE


def test_a16_on_the_prefill_array_costs_what_a8_does():
    config = HardwareConfig.from_preset("u280-small")
    regs = Registers(n_tokens=4, position=0)
    a8, a16 = (op_timing.op_cost(head_tile(GemmMode.GEMM, a16), regs, config, IDEAL, op_timing.Datapath.TARGET) for a16 in (False, True))
    assert a16.cycles == a8.cycles and a16.mode is Mode.PREFILL
