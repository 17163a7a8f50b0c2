"""The XRT kernel shell: control slave, one AXI4 master per HBM port, and a DMA copy datapath.

`llmfab rtl` now emits the engine (rtl/engine/engine.py), which has the same frame (control
slave, one master per port named by `master_bundle`, pointer arguments named by
`pointer_argument`, the ap_ctrl_hs handshake). The copy shell stays as the minimal kernel that
`benchmarks/rtl.py` measures (Yosys resources of the frame alone, simulator throughput) and
that tests/rtl/test_kernel_shell.py runs as XRT does. Its arguments are

| argument | kind | meaning |
| --- | --- | --- |
| `hbm0` .. `hbm{P-1}` | 64-bit pointer | buffer of port p, accessed through master `m_axi_hbm{p:02d}` |
| `src_offset` | 32-bit scalar | byte offset of the source region inside every buffer |
| `dst_offset` | 32-bit scalar | byte offset of the destination region inside every buffer |
| `beats` | 32-bit scalar | number of full-width beats to copy in every buffer |

A run (host writes the arguments, then ap_start) copies `beats` beats from `hbm_i + src_offset`
to `hbm_i + dst_offset` in every buffer at once, one copy engine per port, and signals ap_done
when the last write response of every port is in. The regions must not overlap. Offsets and
pointers must be beat-aligned (the low bits are ignored).

The engine keeps the pointer arguments and the handshake (`ap_start` held until `ap_ready`,
then `ap_done`) and puts its DMA (rtl/engine/dma.py) behind each master.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi_master import BEATS_WIDTH, AxiMaster, TransferCommand
from .control import CONTROL_ADDR_WIDTH, ControlSlave, RegisterMap
from .interfaces import AXI_ADDR_WIDTH, AXI4LiteSignature, AXI4Signature

SCALARS = ("src_offset", "dst_offset", "beats")


def master_bundle(port: int) -> str:
    """The name of the AXI4 master of HBM port `port`: m_axi_hbm00, m_axi_hbm01, ... (the names
    the compiler's connectivity.cfg binds to HBM[i], compiler/placement.py)."""
    return f"m_axi_hbm{port:02d}"


def pointer_argument(port: int) -> str:
    return f"hbm{port}"


def shell_register_map(ports: int) -> RegisterMap:
    """Kernel arguments of the shell: one buffer pointer per port, then the copy scalars."""
    return RegisterMap.build([(pointer_argument(p), master_bundle(p)) for p in range(ports)], SCALARS)


class CopyEngine(wiring.Component):
    """Copies `beats` beats from `src` to `dst` through one AxiMaster's command/data streams.

    `start` (one cycle) latches the addresses and issues both commands; read data passes a
    FIFO of `fifo_depth` beats to the write stream; `busy` stays high until the commands are
    taken and the master reports both engines idle.
    """

    def __init__(self, data_width: int, fifo_depth: int):
        self.data_width = data_width
        self.fifo_depth = fifo_depth
        super().__init__({
            "start": In(1), "src": In(AXI_ADDR_WIDTH), "dst": In(AXI_ADDR_WIDTH), "beats": In(BEATS_WIDTH),
            "busy": Out(1),
            "read_cmd": Out(stream.Signature(TransferCommand)),
            "read_data": In(stream.Signature(data_width)),
            "write_cmd": Out(stream.Signature(TransferCommand)),
            "write_data": Out(stream.Signature(data_width)),
            "read_idle": In(1), "write_idle": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = fifo.SyncFIFOBuffered(width=self.data_width, depth=self.fifo_depth)
        read_pending, write_pending = Signal(), Signal()
        with m.If(self.start):
            m.d.sync += [
                self.read_cmd.payload.addr.eq(self.src), self.read_cmd.payload.beats.eq(self.beats),
                self.write_cmd.payload.addr.eq(self.dst), self.write_cmd.payload.beats.eq(self.beats),
                read_pending.eq(1), write_pending.eq(1),
            ]
        with m.If(self.read_cmd.valid & self.read_cmd.ready):
            m.d.sync += read_pending.eq(0)
        with m.If(self.write_cmd.valid & self.write_cmd.ready):
            m.d.sync += write_pending.eq(0)
        m.d.comb += [
            self.read_cmd.valid.eq(read_pending), self.write_cmd.valid.eq(write_pending),
            buffer.w_data.eq(self.read_data.payload), buffer.w_en.eq(self.read_data.valid),
            self.read_data.ready.eq(buffer.w_rdy),
            self.write_data.payload.eq(buffer.r_data), self.write_data.valid.eq(buffer.r_rdy),
            buffer.r_en.eq(self.write_data.ready),
            self.busy.eq(read_pending | write_pending | ~self.read_idle | ~self.write_idle | buffer.r_rdy),
        ]
        return m


class KernelShell(wiring.Component):
    """Control slave + `ports` AXI4 masters + one CopyEngine per port (see the module docstring).

    Ports (Amaranth names): `s_axi_control`, `m_axi_hbm00` .. `m_axi_hbm{P-1:02d}`, `interrupt`;
    clock `clk`, reset `rst`. `rtl.emit.kernel_verilog` wraps it with XRT's names.
    """

    def __init__(self, ports: int, data_width: int, max_burst_beats: int):
        if ports < 1:
            self._MustUse__used = True  # rejected, so there is nothing to elaborate (no Amaranth warning)
            raise ValueError(f"the kernel needs at least one HBM port, got {ports}.")
        self.ports = ports
        self.data_width = data_width
        self.max_burst_beats = max_burst_beats
        self.register_map = shell_register_map(ports)
        members = {"s_axi_control": In(AXI4LiteSignature(CONTROL_ADDR_WIDTH)), "interrupt": Out(1)}
        for p in range(ports):
            members[master_bundle(p)] = Out(AXI4Signature(data_width))
        super().__init__(members)

    @classmethod
    def for_config(cls, config) -> KernelShell:
        """The shell for a HardwareConfig: its HBM port count, AXI width and burst length."""
        e = config.engine
        return cls(e.hbm_ports, e.axi_data_width_bits, e.axi_burst_len)

    def elaborate(self, platform):
        m = Module()
        m.submodules.control = control = ControlSlave(self.register_map)
        wiring.connect(m, wiring.flipped(self.s_axi_control), control.s_axi_control)
        m.d.comb += self.interrupt.eq(control.interrupt)
        args = control.args

        running, launch = Signal(), Signal()
        engines = []
        for p in range(self.ports):
            master = AxiMaster(self.data_width, self.max_burst_beats)
            engine = CopyEngine(self.data_width, fifo_depth=self.max_burst_beats)
            m.submodules[f"master{p}"] = master
            m.submodules[f"copy{p}"] = engine
            wiring.connect(m, wiring.flipped(getattr(self, master_bundle(p))), master.axi)
            wiring.connect(m, engine.read_cmd, master.read_cmd)
            wiring.connect(m, master.read_data, engine.read_data)
            wiring.connect(m, engine.write_cmd, master.write_cmd)
            wiring.connect(m, engine.write_data, master.write_data)
            base = getattr(args, pointer_argument(p))
            m.d.comb += [
                engine.start.eq(launch), engine.src.eq(base + args.src_offset),
                engine.dst.eq(base + args.dst_offset), engine.beats.eq(args.beats),
                engine.read_idle.eq(master.read_idle), engine.write_idle.eq(master.write_idle),
                master.clear_error.eq(launch),
            ]
            engines.append(engine)

        # ap_ctrl_hs: take the arguments when idle and started, answer ap_ready at once,
        # ap_done when every engine has finished
        any_busy = Signal()
        m.d.comb += [
            any_busy.eq(Cat(*(engine.busy for engine in engines)).any()),
            launch.eq(control.ap_start & ~running),
            control.ap_ready.eq(launch),
            control.ap_idle.eq(~running),
        ]
        finish = running & ~any_busy
        m.d.comb += control.ap_done.eq(finish)
        with m.If(launch):
            m.d.sync += running.eq(1)
        with m.Elif(finish):
            m.d.sync += running.eq(0)
        return m
