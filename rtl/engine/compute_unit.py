"""The COMPUTE unit: resolves an instruction's rows and runs it on the sequencer of its opcode.

`ComputeUnit(geometry, sequencers)` takes a dict opcode -> Sequencer (rtl/engine/sequencer.py;
one sequencer may serve several opcodes). It is the executor behind the COMPUTE UnitController
(rtl/engine/issue.py). Started with an instruction it

1. resolves `rows` = `value(rows_src)` from the runtime registers (`compiler.isa.row_range`:
   COMPUTE instructions cover rows 0 … value − 1);
2. END: waits until the LOAD and STORE units have drained (`end_drained`), then answers;
3. otherwise starts the opcode's sequencer (`start` for one cycle, `inst`/`rows`/`regs` held),
   hands it the unit's two buffer read ports and its write port (only the running sequencer's
   ports reach the buffers), and answers when it raises `done`: with `SEQUENCER_ERROR` if it
   raised `error`, `BUFFER_FAULT` if a buffer access of the instruction went past a buffer
   (`fault`, the buffers' sticky flag, cleared at every start), no error otherwise. An opcode
   without a sequencer answers `NO_SEQUENCER` at once.

Cycles: `exe.start` -> sequencer `start` 1, sequencer `done` -> `exe.done` 1 (`DISPATCH_CYCLES` + the
sequencer's cycles); with the controller's registered start (issue.START_CYCLES) an instruction's
trace spans its sequencer's `cycles` + 3, which the whole-engine cycle check measures.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.compiler import isa

from .buffers import read_port_signature, write_port_signature
from .geometry import EngineGeometry
from .isa_layout import COMPUTE_LAYOUT
from .issue import ErrorCode, executor_signature
from .sequencer import ROWS_BITS, RegistersLayout, Sequencer

DISPATCH_CYCLES = 2


class ComputeUnit(wiring.Component):
    """Members: `exe` (executor side), `regs`, `end_drained`, `fault`, `clear_fault`,
    `read[0]`, `read[1]`, `write` (buffer ports), `busy`, `opcode` (of the instruction running)."""

    def __init__(self, geometry: EngineGeometry, sequencers: dict):
        self.geometry = geometry
        self.sequencers = {isa.Opcode(op): seq for op, seq in sequencers.items()}
        for op, seq in self.sequencers.items():
            if not isinstance(seq, Sequencer):
                raise TypeError(f"the sequencer of {op.name} is a {type(seq).__name__}, not a Sequencer")
            if isa.is_memory(op) or op == isa.Opcode.END:
                raise ValueError(f"{op.name} is not a COMPUTE opcode a sequencer can execute")
        self.unique = list({id(s): s for s in self.sequencers.values()}.values())
        g = geometry.buffers
        super().__init__({"exe": In(executor_signature()), "regs": In(RegistersLayout), "end_drained": In(1),
                          "fault": In(1), "clear_fault": Out(1),
                          "read": Out(read_port_signature(g)).array(2), "write": Out(write_port_signature(g)),
                          "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        inst = COMPUTE_LAYOUT(self.exe.word)
        regs = self.regs
        rows = Signal(ROWS_BITS)
        src = inst.rows_src
        m.d.comb += rows.eq(Mux(src == isa.RowSource.TOKENS, regs.n_tokens,
                                Mux(src == isa.RowSource.HISTORY, regs.position,
                                    Mux(src == isa.RowSource.CONTEXT, regs.position + regs.n_tokens, inst.rows))))
        index = {id(s): i for i, s in enumerate(self.unique)}
        selected = Signal(range(max(2, len(self.unique))))  # at least 1 bit (a 0-bit wire trips Verilator)
        known = Signal()
        for op, seq in self.sequencers.items():
            with m.If(inst.opcode == op):
                m.d.comb += [known.eq(1), selected.eq(index[id(seq)])]

        start = Signal()
        for i, seq in enumerate(self.unique):
            m.submodules[f"seq{i}_{type(seq).__name__.lower()}"] = seq
            m.d.comb += [seq.start.eq(start & (selected == i)), seq.inst.as_value().eq(self.exe.word),
                         seq.rows.eq(rows), seq.regs.eq(regs)]
            for k in range(2):
                m.d.comb += seq.read[k].data.eq(self.read[k].data)
            with m.If(selected == i):
                for k in range(2):
                    m.d.comb += [self.read[k].buf.eq(seq.read[k].buf), self.read[k].addr.eq(seq.read[k].addr),
                                 self.read[k].en.eq(seq.read[k].en)]
                m.d.comb += [self.write.buf.eq(seq.write.buf), self.write.addr.eq(seq.write.addr),
                             self.write.en.eq(seq.write.en), self.write.data.eq(seq.write.data)]
        seq_done = Signal()
        seq_error = Signal()
        for i, seq in enumerate(self.unique):
            with m.If(selected == i):
                m.d.comb += [seq_done.eq(seq.done), seq_error.eq(seq.error)]

        latched = Signal(8)
        m.d.comb += self.busy.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.exe.start):
                    m.d.comb += self.clear_fault.eq(1)
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += self.busy.eq(1)
                with m.If(inst.opcode == isa.Opcode.END):
                    m.next = "END"
                with m.Elif(~known):
                    m.d.comb += [self.exe.done.eq(1), self.exe.error.eq(ErrorCode.NO_SEQUENCER)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(seq_done):
                    m.next = "ANSWER"
                    with m.If(seq_error):
                        m.d.sync += latched.eq(ErrorCode.SEQUENCER_ERROR)
                    with m.Else():
                        m.d.sync += latched.eq(0)
            with m.State("ANSWER"):  # the sequencer's last write is in the buffer now
                m.d.comb += [self.busy.eq(1), self.exe.done.eq(1),
                             self.exe.error.eq(Mux(latched != 0, latched,
                                                   Mux(self.fault, ErrorCode.BUFFER_FAULT, 0)))]
                m.next = "IDLE"
            with m.State("END"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.end_drained):
                    m.d.comb += self.exe.done.eq(1)
                    m.next = "IDLE"
        return m

