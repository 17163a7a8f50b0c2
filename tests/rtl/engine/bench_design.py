"""A sequencer on the engine's buffers, with a backdoor port pair for the test to load and read them."""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.rtl.engine.buffers import EngineBuffers, read_port_signature, write_port_signature
from llmfab.rtl.engine.isa_layout import WORD_BITS
from llmfab.rtl.engine.sequencer import ROWS_BITS, RegistersLayout, Sequencer


class SequencerBench(wiring.Component):
    """Ports: `start`, `inst` (256-bit word), `rows`, `regs`, `done`, `error`, `fault`, and the
    backdoor `bd_read` / `bd_write` buffer ports (driven by cocotb)."""

    def __init__(self, sequencer: Sequencer):
        self.sequencer = sequencer
        g = sequencer.geometry.buffers
        super().__init__({
            "start": In(1), "inst": In(WORD_BITS), "rows": In(ROWS_BITS), "regs": In(RegistersLayout),
            "done": Out(1), "error": Out(1), "fault": Out(1),
            "bd_read": In(read_port_signature(g)), "bd_write": In(write_port_signature(g)),
        })

    def elaborate(self, platform):
        m = Module()
        seq = self.sequencer
        m.submodules.buffers = buffers = EngineBuffers(seq.geometry.buffers, reads=3, writes=2)
        m.submodules.sequencer = seq
        wiring.connect(m, seq.read[0], buffers.read[0])
        wiring.connect(m, seq.read[1], buffers.read[1])
        wiring.connect(m, seq.write, buffers.write[0])
        wiring.connect(m, wiring.flipped(self.bd_read), buffers.read[2])
        wiring.connect(m, wiring.flipped(self.bd_write), buffers.write[1])
        m.d.comb += [seq.start.eq(self.start), seq.inst.as_value().eq(self.inst), seq.rows.eq(self.rows),
                     seq.regs.eq(self.regs), self.done.eq(seq.done), self.error.eq(seq.error),
                     self.fault.eq(buffers.fault)]
        return m
