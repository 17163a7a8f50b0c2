"""What-if transformations of a program, to price a scheduler change before it is built.

Each function returns a new `TimedProgram` whose instruction stream differs from the scheduler's
in one documented way; the dependency tokens are untouched, so the program stays valid. They are
used by benchmarks/cycle_model.py and docs/performance.md to show what a proposed change buys;
`llmfab simulate` never applies them.
"""

from __future__ import annotations

import dataclasses

from llmfab.compiler.isa import Buffer, Flag, Opcode, Unit

from .cycle_program import TimedProgram


def stripe_single_port_transfers(program: TimedProgram, min_bytes: int = 64 * 1024) -> TimedProgram:
    """Every LOAD/STORE of one row of at least `min_bytes` (one row sits in one pseudo-channel) is cut
    into one chunk per HBM port and striped, as compiler/placement.py's `chunked` does for weight
    tiles. Models placing such regions (e.g. the per-channel KV staging block) over all ports."""
    ports = program.hardware.engine.hbm_ports
    out = []
    for inst in program.instructions:
        if (inst.opcode in (Opcode.LOAD, Opcode.STORE) and inst.rows_src == 0 and inst.rows == 1
                and inst.row_bytes >= min_bytes):
            chunk = -(-inst.row_bytes // ports)
            inst = inst.replace(rows=ports, row_bytes=chunk, hbm_stride=chunk, buf_stride=chunk,
                                flags=int(inst.flags) | Flag.STRIPED, sub=ports)
        out.append(inst)
    return dataclasses.replace(program, instructions=tuple(out), name=f"{program.name} (single-port regions striped)")


def unbounded_weight_prefetch(program: TimedProgram) -> TimedProgram:
    """Drop the waits of weight-tile LOADs for a free tile slot, as if the weight buffer held every
    tile: an upper bound on what deeper prefetching (more slots) can overlap.

    COMPUTE -> LOAD tokens are paired in order (the k-th pop takes the k-th push); every pair whose
    pop belongs to a LOAD into the weight buffer is removed on both sides, so the stream stays
    balanced and the other waits (KV buffer, norm slots) are kept.
    """
    insts = list(program.instructions)
    pushes = [i for i, inst in enumerate(insts) if inst.unit is Unit.COMPUTE and inst.push_prev]
    pops = [i for i, inst in enumerate(insts) if inst.unit is Unit.LOAD and inst.pop_next]
    for push, pop in zip(pushes, pops):
        inst = insts[pop]
        if inst.opcode is Opcode.LOAD and inst.buf == Buffer.WGT and inst.rows > 1:
            insts[pop] = inst.replace(pop_next=0)
            insts[push] = insts[push].replace(push_prev=0)
    return dataclasses.replace(program, instructions=tuple(insts), name=f"{program.name} (unbounded weight prefetch)")
