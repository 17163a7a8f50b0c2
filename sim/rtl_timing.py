"""Cycles of the engine as built: each instruction's own RTL formula.

COMPUTE instructions take their sequencer's formula (rtl/engine/seq_*.py), MEMORY instructions
the LOAD/STORE units' `memory_unit.transfer_cycles` (`memory_cycles`). Every COMPUTE sequencer of the Amaranth engine states its cycles from start to done as a
classmethod `cycles` (docs/rtl_units.md, "COMPUTE sequencers"), and its cocotb test asserts that
formula exactly on word-aligned operands. This module evaluates those same formulas for an
instruction under the runtime registers, on the engine geometry the RTL builds from the
HardwareConfig (`EngineGeometry.from_config`), so the cycle model (`Datapath.RTL`, sim/op_timing.py)
times what the RTL does rather than a datapath the RTL does not have.

Where the RTL's formula has a precondition this module cannot see from the instruction alone, it
applies the aligned formula, which the tests show is a lower bound (an unaligned span costs one
read more): ATTENTION and KV_QUANT spans not on word boundaries. ATTENTION beats wider than a
buffer word add `AttentionSequencer.wide_beat_cycles`, an estimate (its docstring).
One case the RTL tests do not time: a GEMM whose code stream (`lanes x bits`) is wider than a
buffer word. The reading port then sets the rate (seq_gemm's docstring), and the formula is
evaluated with the lanes one word feeds.
"""

from __future__ import annotations

import functools

import numpy as np

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import Flag, GemmMode, Instruction, KvMode, Opcode, Registers, row_range, transfer_runs


@functools.lru_cache(maxsize=16)
def _engine(config: HardwareConfig):
    """(geometry, sequencer class by opcode, from each class's OPCODES) of the RTL engine built from
    `config` (rtl/engine/engine.default_sequencers builds these classes from this geometry)."""
    from llmfab.rtl.engine.geometry import EngineGeometry
    from llmfab.rtl.engine.seq_attention import AttentionSequencer
    from llmfab.rtl.engine.seq_elementwise import ElementwiseSequencer
    from llmfab.rtl.engine.seq_embed import EmbedSequencer
    from llmfab.rtl.engine.seq_gemm import GemmSequencer
    from llmfab.rtl.engine.seq_kv_quant import KvQuantSequencer
    from llmfab.rtl.engine.seq_requant import RequantSequencer
    from llmfab.rtl.engine.seq_rmsnorm import RmsNormSequencer
    from llmfab.rtl.engine.seq_rope import RopeSequencer

    classes = (ElementwiseSequencer, EmbedSequencer, RequantSequencer, RmsNormSequencer, RopeSequencer,
               GemmSequencer, KvQuantSequencer, AttentionSequencer)
    return EngineGeometry.from_config(config), {op: cls for cls in classes for op in cls.OPCODES}


def _gemm(seq, geometry, inst: Instruction, regs: Registers, rows: int) -> int:
    mode = GemmMode(inst.mode)
    token_rows, lanes, products = seq.shape_of(mode, geometry.decode_lanes, geometry.prefill_rows,
                                               geometry.prefill_cols)
    fed = 8 * geometry.word_bytes // max(inst.sub, 1)  # kept codes one word of the tile carries
    if lanes > fed:
        lanes = 1 << (fed.bit_length() - 1)
        products = min(products, lanes)
    return seq.cycles(geometry.word_bytes, lanes, products, token_rows, rows, inst.cols, inst.depth,
                      sparse=mode.sparse, a16=bool(inst.flags & Flag.A16))


def _attention(seq, geometry, inst: Instruction, regs: Registers, rows: int) -> int:
    heads, depth = inst.cols // max(inst.depth, 1), max(inst.depth, 1)
    lanes, keys, values, block = geometry.attention_lanes, KvMode(inst.mode & 3), KvMode(inst.mode >> 2 & 3), inst.aux
    shape = (regs.sinks, regs.window) if inst.flags & Flag.LAMBDA else None
    wide = seq.wide_beat_cycles(geometry, lanes, rows, regs.position, heads, depth, keys, values, block, shape)
    if shape is not None:
        return wide + seq.lambda_cycles(geometry, lanes, rows, regs.position, heads, depth, regs.sinks, regs.window,
                                        key_mode=keys, value_mode=values, block=block)
    return wide + seq.cycles(geometry, lanes, rows, regs.position, heads, depth, keys, values, block)


def _kv_quant(seq, geometry, inst: Instruction, regs: Registers, rows: int) -> int:
    depth = max(inst.depth, 1)
    shape = (regs.sinks, regs.window, regs.chunk) if inst.flags & Flag.LAMBDA else None
    return seq.cycles(geometry, KvMode(inst.mode), rows, regs.position, inst.cols // depth, depth, max(inst.aux, 1),
                      shape)


def _elementwise(seq, geometry, inst: Instruction, regs: Registers, rows: int) -> int:
    return seq.cycles(inst.opcode, rows * inst.cols, geometry.sfu_lanes)


# opcode -> formula(sequencer class, geometry, instruction, registers, rows > 0), for cols > 0
RTL_CYCLES = {
    Opcode.GEMM: _gemm,
    Opcode.ATTENTION: _attention,
    Opcode.KV_QUANT: _kv_quant,
    Opcode.ADD: _elementwise,
    Opcode.SILU_MUL: _elementwise,
    Opcode.REQUANT: lambda seq, g, inst, regs, rows: seq.cycles(rows, inst.cols, g.sfu_lanes),
    Opcode.EMBED: lambda seq, g, inst, regs, rows: seq.cycles(rows, inst.cols, g.sfu_lanes),
    Opcode.RMSNORM: lambda seq, g, inst, regs, rows: seq.cycles(rows, inst.cols, g.sfu_lanes, inst.src1_addr),
    Opcode.ROPE: lambda seq, g, inst, regs, rows: seq.cycles(rows, inst.cols, max(inst.depth, 1), g.sfu_lanes),
}
EMPTY_COMPUTE_CYCLES = 1  # no rows or no columns: a sequencer is done in its check cycle


def memory_cycles(inst: Instruction, regs: Registers, config: HardwareConfig, read_latency: float) -> float:
    """Cycles a LOAD, LOAD_ROWS or STORE occupies its RTL unit (rtl/engine/memory_unit.transfer_cycles)
    with reads answered `read_latency` cycles after their request. LOAD_ROWS' ids are data: each is
    taken to be at least `sub` (a table row past the first stripe, so its division is the long one)."""
    from llmfab.rtl.engine import memory_unit as mu

    geometry, _ = _engine(config)
    striped = bool(inst.flags & Flag.STRIPED) and inst.sub > 1
    sub = inst.sub if striped else 1
    runs = transfer_runs(inst, regs)
    start = runs[0][0] if runs else 0
    beat = geometry.axi_data_width // 8
    rows = np.concatenate([np.arange(first, first + count) for first, count in runs]) if runs else np.zeros(0, int)
    index = np.arange(rows.size)
    ports = inst.pc + rows % sub
    hbm = inst.hbm_offset + (rows // sub) * inst.hbm_stride
    buf = inst.buf_addr + (rows if inst.flags & Flag.BUF_AT_START else index) * inst.buf_stride
    # rows alike for the DMA (port, both alignments) as one entry each, with their count and first request
    keys = ((ports - inst.pc) * beat + hbm % beat) * geometry.word_bytes + buf % geometry.word_bytes
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    entries = [(int(i), int(ports[i]), int(hbm[i]), int(buf[i]), inst.row_bytes, int(n)) for i, n in zip(first, counts)]
    kind = {Opcode.LOAD: "load", Opcode.LOAD_ROWS: "gather", Opcode.STORE: "store"}[Opcode(inst.opcode)]
    if kind == "gather":  # ids read and divided one after another
        setup = rows.size * (mu.GATHER_ID_CYCLES + (mu.DIVIDE_CYCLES if striped else 0))
    else:
        setup = mu.divide_cycles(start, sub) if striped else 0
        if inst.flags & Flag.RING:
            setup += mu.RING_CYCLES + mu.divide_cycles(start, max(inst.rows, 1))
    return mu.transfer_cycles(kind, entries, beat_bytes=beat, word_bytes=geometry.word_bytes,
                              read_latency=read_latency, setup=setup)


def compute_cycles(inst: Instruction, regs: Registers, config: HardwareConfig) -> int:
    """Cycles a COMPUTE instruction occupies the RTL engine's COMPUTE unit (built from `config`): its
    sequencer's start to done, plus the unit controller's registered start and the compute unit's
    hand-over in and out (rtl/engine/issue.START_CYCLES, compute_unit.DISPATCH_CYCLES)."""
    from llmfab.rtl.engine.compute_unit import DISPATCH_CYCLES
    from llmfab.rtl.engine.issue import START_CYCLES

    geometry, classes = _engine(config)
    opcode = Opcode(inst.opcode)
    rows = row_range(inst, regs)[1]
    if rows == 0 or inst.cols == 0:
        cycles = EMPTY_COMPUTE_CYCLES
    else:
        cycles = RTL_CYCLES[opcode](classes[opcode], geometry, inst, regs, rows)
    return cycles + START_CYCLES + DISPATCH_CYCLES
