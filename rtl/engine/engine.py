"""The engine as an XRT RTL kernel: control slave, HBM ports, buffers, issue and the three units.

```
s_axi_control -> ControlSlave --args--> IssueUnit --(queues, tokens)--> LOAD  MemoryUnit --rows--> PortDma[p] <-> m_axi_hbmPP
                     ^ status              |  fetch via PortDma[0]        COMPUTE ComputeUnit -> sequencers
                     +------------------- status, cycles                  STORE MemoryUnit --rows--> PortDma[p]
                                 EngineBuffers (WGT, ACT, KV, OUT): 2 + P + 1 read ports, 1 + P write ports
```

Kernel arguments (`engine_register_map`, offsets from rtl/control.RegisterMap):

| argument | kind | meaning |
| --- | --- | --- |
| `hbm0` … `hbm{P-1}` | pointer | base of the buffer port p reaches through `m_axi_hbmPP` (pseudo-channel p of the program) |
| `instructions` | pointer | the program's instruction words (`instructions.bin`), a buffer in HBM[0], read through `m_axi_hbm00` |
| `entry`, `count` | scalar | the routine: index of its first word, number of words (manifest `routines`) |
| `n_tokens`, `position` | scalar | runtime registers T and P of the run (docs/isa.md; n_tokens uses 16 bits) |
| `sinks`, `window`, `chunk` | scalar | runtime registers S, W and C (16 bits each) |

Status registers (read-only, after the arguments; valid after ap_done until the next ap_start):

| register | meaning |
| --- | --- |
| `status` | bit 0 running, bit 1 error |
| `error_code` | `issue.ErrorCode` (0: the routine ended at END with every token queue empty) |
| `error_address` | index of the instruction at fault (`issue.describe_error` words it) |
| `cycles_lo`, `cycles_hi` | cycles from ap_start taken to ap_done |
| `retired` | instructions completed (END included) |
| `load_busy`, `compute_busy`, `store_busy` | cycles each unit was executing an instruction |

A run: the host writes the arguments, sets ap_start; the engine takes them (ap_ready), latches
the runtime registers, fetches and runs the routine, and raises ap_done (with the interrupt when
enabled) when END retired with every unit drained, or when an error stopped it. The on-chip
buffers keep their contents from run to run, as the emulator's do.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.compiler.isa import Opcode
from llmfab.rtl.control import CONTROL_ADDR_WIDTH, ControlSlave, RegisterMap
from llmfab.rtl.interfaces import AXI4LiteSignature, AXI4Signature
from llmfab.rtl.kernel_shell import master_bundle, pointer_argument

from .buffers import EngineBuffers
from .compute_unit import ComputeUnit
from .dma import PortDma
from .geometry import EngineGeometry
from .issue import CYCLE_BITS, ErrorCode, IssueUnit, UnitId, trace_signature
from .memory_unit import MemoryUnit

INSTRUCTIONS_ARGUMENT = "instructions"
INSTRUCTIONS_MASTER = master_bundle(0)
SCALARS = ("entry", "count", "n_tokens", "position", "sinks", "window", "chunk")
STATUS = (("status", "bit 0 running, bit 1 error"),
          ("error_code", "error code of the run (0: none; rtl/engine/issue.py ErrorCode)"),
          ("error_address", "index of the instruction at fault"),
          ("cycles_lo", "cycles of the run, low word"), ("cycles_hi", "cycles of the run, high word"),
          ("retired", "instructions completed"),
          ("load_busy", "cycles the LOAD unit executed"), ("compute_busy", "cycles the COMPUTE unit executed"),
          ("store_busy", "cycles the STORE unit executed"))


def engine_register_map(ports: int) -> RegisterMap:
    """The kernel's arguments and status registers (module docstring)."""
    pointers = [(pointer_argument(p), master_bundle(p)) for p in range(ports)]
    pointers.append((INSTRUCTIONS_ARGUMENT, INSTRUCTIONS_MASTER))
    return RegisterMap.build(pointers, SCALARS, STATUS)


def default_sequencers(geometry: EngineGeometry) -> dict:
    """The COMPUTE sequencers the engine is built with: one per COMPUTE opcode of docs/isa.md."""
    from .seq_attention import AttentionSequencer
    from .seq_elementwise import ElementwiseSequencer
    from .seq_embed import EmbedSequencer
    from .seq_gemm import GemmSequencer
    from .seq_kv_quant import KvQuantSequencer
    from .seq_requant import RequantSequencer
    from .seq_rmsnorm import RmsNormSequencer
    from .seq_rope import RopeSequencer

    g = geometry
    return {Opcode.ADD: ElementwiseSequencer(g, Opcode.ADD),
            Opcode.SILU_MUL: ElementwiseSequencer(g, Opcode.SILU_MUL),
            Opcode.EMBED: EmbedSequencer(g), Opcode.REQUANT: RequantSequencer(g), Opcode.RMSNORM: RmsNormSequencer(g),
            Opcode.ROPE: RopeSequencer(g),
            Opcode.GEMM: GemmSequencer(g, g.decode_lanes, g.prefill_rows, g.prefill_cols),
            Opcode.KV_QUANT: KvQuantSequencer(g), Opcode.ATTENTION: AttentionSequencer(g, g.attention_lanes)}


class Engine(wiring.Component):
    """The kernel core (module docstring). Ports: `s_axi_control`, `m_axi_hbm00` … , `interrupt`;
    with `trace`, also `trace` (per unit: busy, running instruction, retirement stamps) and
    `cycle` for the cocotb harness (the XRT kernel is built without them)."""

    def __init__(self, geometry: EngineGeometry, sequencers: dict | None = None, trace: bool = False):
        self.geometry = geometry
        self.ports = geometry.hbm_ports
        self.sequencers = default_sequencers(geometry) if sequencers is None else dict(sequencers)
        self.trace_enabled = trace
        self.register_map = engine_register_map(self.ports)
        members = {"s_axi_control": In(AXI4LiteSignature(CONTROL_ADDR_WIDTH)), "interrupt": Out(1)}
        for p in range(self.ports):
            members[master_bundle(p)] = Out(AXI4Signature(geometry.axi_data_width))
        if trace:
            members["trace"] = Out(wiring.Signature({u.name.lower(): Out(trace_signature()) for u in UnitId}))
            members["cycle"] = Out(CYCLE_BITS)
        super().__init__(members)

    @classmethod
    def for_config(cls, config, sequencers: dict | None = None, trace: bool = False) -> "Engine":
        return cls(EngineGeometry.from_config(config), sequencers, trace)

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        P = self.ports
        beat_bytes = g.axi_data_width // 8
        m.submodules.control = control = ControlSlave(self.register_map)
        wiring.connect(m, wiring.flipped(self.s_axi_control), control.s_axi_control)
        m.d.comb += self.interrupt.eq(control.interrupt)
        args = control.args

        m.submodules.buffers = buffers = EngineBuffers(g.buffers, reads=2 + P + 1, writes=1 + P)
        m.submodules.issue = issue = IssueUnit(beat_bytes)
        m.submodules.load = load = MemoryUnit("load", g)
        m.submodules.store = store = MemoryUnit("store", g)
        m.submodules.compute = compute = ComputeUnit(g, self.sequencers)
        dmas = []
        for p in range(P):
            dma = PortDma(g.buffers, g.axi_data_width, g.axi_burst_len, fetch=p == 0)
            m.submodules[f"port{p}"] = dma
            dmas.append(dma)
            wiring.connect(m, wiring.flipped(getattr(self, master_bundle(p))), dma.axi)
            wiring.connect(m, load.req[p], dma.load_req)
            wiring.connect(m, store.req[p], dma.store_req)
            wiring.connect(m, dma.rport, buffers.read[2 + p])
            wiring.connect(m, dma.wport, buffers.write[1 + p])
            base = getattr(args, pointer_argument(p))
            m.d.comb += [load.bases[p].eq(base), store.bases[p].eq(base),
                         load.row_done[p].eq(dma.load_done), store.row_done[p].eq(dma.store_done),
                         store.write_idle[p].eq(dma.write_idle), load.write_idle[p].eq(1)]
        wiring.connect(m, issue.fetch_cmd, dmas[0].fetch_cmd)
        wiring.connect(m, dmas[0].fetch_data, issue.fetch_data)
        m.d.comb += issue.fetch_error.eq(dmas[0].fetch_error)
        wiring.connect(m, compute.read[0], buffers.read[0])
        wiring.connect(m, compute.read[1], buffers.read[1])
        wiring.connect(m, compute.write, buffers.write[0])
        wiring.connect(m, load.ids, buffers.read[2 + P])
        m.d.comb += [buffers.clear_fault.eq(compute.clear_fault), compute.fault.eq(buffers.fault)]
        wiring.connect(m, issue.load, load.exe)
        wiring.connect(m, issue.compute, compute.exe)
        wiring.connect(m, issue.store, store.exe)

        # ---- ap_ctrl_hs and the run's registers
        launch = Signal()
        running = issue.running
        m.d.comb += [launch.eq(control.ap_start & ~running), control.ap_ready.eq(launch),
                     control.ap_idle.eq(~running), control.ap_done.eq(issue.finished)]
        regs = Signal.like(load.regs)
        with m.If(launch):
            m.d.sync += [regs.n_tokens.eq(args.n_tokens), regs.position.eq(args.position), regs.sinks.eq(args.sinks),
                         regs.window.eq(args.window), regs.chunk.eq(args.chunk)]
        m.d.comb += [load.regs.eq(regs), store.regs.eq(regs), compute.regs.eq(regs),
                     load.abort.eq(issue.aborting), store.abort.eq(issue.aborting),
                     compute.end_drained.eq(issue.end_drained),
                     issue.launch.eq(launch), issue.base.eq(getattr(args, INSTRUCTIONS_ARGUMENT)),
                     issue.entry.eq(args.entry), issue.count.eq(args.count)]

        # ---- AXI error responses, named after the instruction their unit is executing
        read_bad = Cat(*(d.read_error for d in dmas)).any()
        write_bad = Cat(*(d.write_error for d in dmas)).any()
        with m.If(read_bad):
            m.d.comb += [issue.ext_error.eq(ErrorCode.AXI_READ), issue.ext_error_addr.eq(issue.trace.load.addr)]
        with m.Elif(write_bad):
            m.d.comb += [issue.ext_error.eq(ErrorCode.AXI_WRITE), issue.ext_error_addr.eq(issue.trace.store.addr)]

        # ---- counters and status
        cycle = Signal(CYCLE_BITS)
        busy = {u: Signal(32, name=f"{u.name.lower()}_busy") for u in UnitId}
        with m.If(launch):
            m.d.sync += [cycle.eq(0), *(b.eq(0) for b in busy.values())]
        with m.Elif(running):
            m.d.sync += cycle.eq(cycle + 1)
            for u, counter in busy.items():
                with m.If(getattr(issue.trace, u.name.lower()).busy):
                    m.d.sync += counter.eq(counter + 1)
        m.d.comb += issue.cycle.eq(cycle)
        status = control.status
        m.d.comb += [status.status.eq(Cat(running, issue.error_code != 0)), status.error_code.eq(issue.error_code),
                     status.error_address.eq(issue.error_addr), status.cycles_lo.eq(cycle[:32]),
                     status.cycles_hi.eq(cycle[32:]), status.retired.eq(issue.retired),
                     status.load_busy.eq(busy[UnitId.LOAD]), status.compute_busy.eq(busy[UnitId.COMPUTE]),
                     status.store_busy.eq(busy[UnitId.STORE])]
        if self.trace_enabled:
            wiring.connect(m, issue.trace, wiring.flipped(self.trace))
            m.d.comb += self.cycle.eq(cycle)
        return m
