"""The contract between the COMPUTE unit and the sequencer of each COMPUTE opcode.

A sequencer executes one instruction at a time on the buffers (docs/isa.md, opcode table). The
COMPUTE unit decodes the word, resolves the row count, and then:

1. drives `start` for one cycle with `inst` (the word in the COMPUTE layout), `rows` (the
   instruction's row count, `row_range`) and `regs` (the runtime registers) valid; they stay
   unchanged until the sequencer answers;
2. the sequencer reads and writes the buffers through its ports (`read[0]`, `read[1]`,
   `write`; rtl/engine/buffers.py), computing exactly what the emulator's handler
   (sim/emulator_ops.py) computes;
3. it raises `done` for one cycle once its last buffer write has been issued (a write is in the
   memory the cycle after), together with `error` if it cannot execute the instruction (an
   unsupported mode or operand: the engine stops and reports it).

The port members are the requester side of the buffer port signatures; a sequencer leaves a
port it does not use at rest (`en` low).
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .buffers import read_port_signature, write_port_signature
from .geometry import EngineGeometry
from .isa_layout import COMPUTE_LAYOUT

# The runtime registers of docs/isa.md as the engine holds them.
RegistersLayout = data.StructLayout({"n_tokens": unsigned(16), "position": unsigned(32), "sinks": unsigned(16),
                                     "window": unsigned(16), "chunk": unsigned(16)})
ROWS_BITS = 32


def sequencer_signature(geometry: EngineGeometry) -> wiring.Signature:
    """The members every sequencer has (from the sequencer's side)."""
    return wiring.Signature({
        "start": In(1), "inst": In(COMPUTE_LAYOUT), "rows": In(ROWS_BITS), "regs": In(RegistersLayout),
        "done": Out(1), "error": Out(1),
        "read": Out(read_port_signature(geometry.buffers)).array(2),
        "write": Out(write_port_signature(geometry.buffers)),
    })


class Sequencer(wiring.Component):
    """Base of the opcode sequencers: the contract's members, built from an EngineGeometry.

    Subclasses set `OPCODES` (the opcodes they execute) and implement `elaborate`.
    """

    OPCODES: tuple = ()

    def __init__(self, geometry: EngineGeometry):
        self.geometry = geometry
        super().__init__(sequencer_signature(geometry))
