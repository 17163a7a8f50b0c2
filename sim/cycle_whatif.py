"""What-if transformations of a program, to price a scheduler change before it is built.

Each function returns a new `TimedProgram` whose instruction stream differs from the scheduler's
in one documented way; the dependency tokens are untouched, so the program stays valid. They are
used by benchmarks/cycle_model.py and docs/performance.md to show what a proposed change buys;
`llmfab simulate` never applies them.
"""

from __future__ import annotations

import dataclasses

from llmfab.compiler.isa import Flag, Opcode

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
