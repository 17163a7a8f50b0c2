"""The AXI4-Lite control slave XRT expects of an RTL kernel (`ap_ctrl_hs`).

Register map (byte offsets, 32-bit registers), as XRT drives an `ap_ctrl_hs` kernel:

| offset | register | bits |
| --- | --- | --- |
| 0x00 | control | 0 ap_start (host sets; cleared when the core answers ap_ready, kept with auto_restart), 1 ap_done (cleared on read), 2 ap_idle (read only), 3 ap_ready (cleared on read), 7 auto_restart |
| 0x04 | GIE | 0 global interrupt enable |
| 0x08 | IER | 0 interrupt on ap_done, 1 interrupt on ap_ready |
| 0x0C | ISR | same bits; set by the event when enabled in IER, writing 1 toggles a bit |
| 0x10.. | arguments | 64-bit buffer pointers (low word first, 8-byte aligned) and 32-bit scalars, in declaration order |
| after the arguments | status | read-only 32-bit registers driven by the core (`RegisterMap.status`; writes are ignored) |

`RegisterMap` is the one place the argument offsets are computed; the packaging (`kernel.xml`)
reads them from it. The core side is the `ap_ctrl_hs` block handshake: `ap_start` is held
until the core pulses `ap_ready` (it has taken the arguments); the core pulses `ap_done` when
it finishes and drives `ap_idle` while it does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .interfaces import AXI4LiteSignature, Resp

CTRL_OFFSET = 0x00
GIE_OFFSET = 0x04
IER_OFFSET = 0x08
ISR_OFFSET = 0x0C
ARGS_OFFSET = 0x10
CONTROL_ADDR_WIDTH = 12  # 4 KiB register window, as the Vitis RTL kernel wizard generates

CTRL_AP_START = 1 << 0
CTRL_AP_DONE = 1 << 1
CTRL_AP_IDLE = 1 << 2
CTRL_AP_READY = 1 << 3
CTRL_AUTO_RESTART = 1 << 7
IRQ_DONE = 1 << 0
IRQ_READY = 1 << 1


class ArgumentKind(Enum):
    POINTER = "pointer"  # 64-bit device address of a buffer, served by one AXI4 master
    SCALAR = "scalar"  # 32-bit value


@dataclass(frozen=True)
class KernelArgument:
    """One kernel argument and where it sits in the register map."""

    name: str
    kind: ArgumentKind
    offset: int
    master: str | None = None  # the AXI4 master bundle a pointer's buffer is accessed through

    @property
    def size_bytes(self) -> int:
        return 8 if self.kind is ArgumentKind.POINTER else 4

    @property
    def width(self) -> int:
        return self.size_bytes * 8


@dataclass(frozen=True)
class StatusRegister:
    """A read-only 32-bit register the core drives (run status, counters), after the arguments."""

    name: str
    offset: int
    description: str = ""


@dataclass(frozen=True)
class RegisterMap:
    """The kernel arguments with their offsets (from 0x10, naturally aligned, in order), then the
    read-only status registers."""

    arguments: tuple[KernelArgument, ...]
    status: tuple[StatusRegister, ...] = ()

    @classmethod
    def build(cls, pointers: Sequence[tuple[str, str]], scalars: Sequence[str],
              status: Sequence[tuple[str, str]] = ()) -> RegisterMap:
        """pointers: (argument name, master bundle) pairs; scalars: argument names; status:
        (register name, description) pairs of read-only registers."""
        args, offset = [], ARGS_OFFSET
        for name, master in pointers:
            offset = (offset + 7) // 8 * 8
            args.append(KernelArgument(name, ArgumentKind.POINTER, offset, master))
            offset += 8
        for name in scalars:
            args.append(KernelArgument(name, ArgumentKind.SCALAR, offset))
            offset += 4
        registers = []
        for name, description in status:
            registers.append(StatusRegister(name, offset, description))
            offset += 4
        names = [a.name for a in args] + [r.name for r in registers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"kernel arguments must have distinct names; repeated: {duplicates}.")
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            raise ValueError(f"kernel argument names must be identifiers: {bad}.")
        if offset > 1 << CONTROL_ADDR_WIDTH:
            raise ValueError(f"{len(args)} arguments need {offset} bytes of registers, more than the "
                             f"{1 << CONTROL_ADDR_WIDTH}-byte control window.")
        return cls(tuple(args), tuple(registers))

    def __getitem__(self, name: str) -> KernelArgument:
        for arg in self.arguments:
            if arg.name == name:
                return arg
        raise KeyError(name)

    def status_register(self, name: str) -> StatusRegister:
        for reg in self.status:
            if reg.name == name:
                return reg
        raise KeyError(name)

    @property
    def end(self) -> int:
        """First byte after the last argument."""
        return max((a.offset + a.size_bytes for a in self.arguments), default=ARGS_OFFSET)

    def signature(self) -> wiring.Signature:
        """The argument values as the control slave outputs them."""
        return wiring.Signature({a.name: Out(a.width) for a in self.arguments})

    def status_signature(self) -> wiring.Signature:
        """The status values as the control slave takes them from the core."""
        return wiring.Signature({r.name: Out(32) for r in self.status})


class ControlSlave(wiring.Component):
    """AXI4-Lite slave with the `ap_ctrl_hs` registers and the kernel arguments.

    Ports: `s_axi_control` (AXI4-Lite, 12-bit addresses), `ap_start` (to the core, level),
    `ap_done`/`ap_ready` (from the core, one-cycle pulses), `ap_idle` (from the core, level),
    `interrupt` (to the platform, level), `args` (one output per argument), and, when the map has
    status registers, `status` (one input per register, read back by the host).
    A write takes the address and data together; reads return OKAY and 0 for unmapped offsets.
    """

    def __init__(self, register_map: RegisterMap):
        self.register_map = register_map
        members = {
            "s_axi_control": In(AXI4LiteSignature(CONTROL_ADDR_WIDTH)),
            "ap_start": Out(1), "ap_done": In(1), "ap_idle": In(1), "ap_ready": In(1),
            "interrupt": Out(1),
            "args": Out(register_map.signature()),
        }
        if register_map.status:
            members["status"] = In(register_map.status_signature())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.s_axi_control
        start, done, ready, auto_restart = Signal(), Signal(), Signal(), Signal()
        gie, ier, isr = Signal(), Signal(2), Signal(2)

        # ---- write channel: take AW and W together, answer on B
        write = Signal()
        m.d.comb += [
            bus.awready.eq(bus.awvalid & bus.wvalid & ~bus.bvalid),
            bus.wready.eq(bus.awvalid & bus.wvalid & ~bus.bvalid),
            write.eq(bus.awvalid & bus.wvalid & ~bus.bvalid),
            bus.bresp.eq(Resp.OKAY),
        ]
        with m.If(write):
            m.d.sync += bus.bvalid.eq(1)
        with m.Elif(bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        word = bus.awaddr[2:]
        strobe0 = bus.wstrb[0]

        def written(offset: int):
            return write & (word == offset // 4)

        # ---- read channel: one read at a time
        read = Signal()
        m.d.comb += [bus.arready.eq(~bus.rvalid), read.eq(bus.arvalid & ~bus.rvalid), bus.rresp.eq(Resp.OKAY)]
        with m.If(read):
            m.d.sync += bus.rvalid.eq(1)
        with m.Elif(bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        read_ctrl = read & (bus.araddr[2:] == CTRL_OFFSET // 4)

        # ---- control register and the core handshake
        m.d.comb += self.ap_start.eq(start)
        with m.If(written(CTRL_OFFSET) & strobe0 & bus.wdata[0]):
            m.d.sync += start.eq(1)
        with m.Elif(self.ap_ready & ~auto_restart):
            m.d.sync += start.eq(0)
        with m.If(written(CTRL_OFFSET) & strobe0):
            m.d.sync += auto_restart.eq(bus.wdata[7])
        # clear-on-read; an event in the same cycle as the read wins
        m.d.sync += [done.eq((done & ~read_ctrl) | self.ap_done),
                     ready.eq((ready & ~read_ctrl) | self.ap_ready)]

        # ---- interrupts
        with m.If(written(GIE_OFFSET) & strobe0):
            m.d.sync += gie.eq(bus.wdata[0])
        with m.If(written(IER_OFFSET) & strobe0):
            m.d.sync += ier.eq(bus.wdata[:2])
        events = Cat(self.ap_done, self.ap_ready) & ier
        toggles = Signal(2)
        m.d.comb += toggles.eq(bus.wdata[:2] & (written(ISR_OFFSET) & strobe0).replicate(2))
        m.d.sync += isr.eq((isr ^ toggles) | events)
        m.d.comb += self.interrupt.eq(gie & isr.any())

        # ---- arguments: 32-bit words with byte strobes
        read_words = {CTRL_OFFSET // 4: Cat(start, done, self.ap_idle, ready, 0, 0, 0, auto_restart),
                      GIE_OFFSET // 4: gie, IER_OFFSET // 4: ier, ISR_OFFSET // 4: isr}
        for arg in self.register_map.arguments:
            value = getattr(self.args, arg.name)
            for w in range(arg.size_bytes // 4):
                read_words[arg.offset // 4 + w] = value.word_select(w, 32)
                for b in range(4):
                    with m.If(written(arg.offset + 4 * w) & bus.wstrb[b]):
                        m.d.sync += value.word_select(4 * w + b, 8).eq(bus.wdata.word_select(b, 8))
        for reg in self.register_map.status:
            read_words[reg.offset // 4] = getattr(self.status, reg.name)
        with m.If(read):
            with m.Switch(bus.araddr[2:]):
                for index, value in read_words.items():
                    with m.Case(index):
                        m.d.sync += bus.rdata.eq(value)
                with m.Default():
                    m.d.sync += bus.rdata.eq(0)
        return m
