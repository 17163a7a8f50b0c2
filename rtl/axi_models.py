"""cocotb models of the buses around the kernel: an AXI4-Lite host and an AXI4 memory.

They run inside a cocotb simulation (import them from a cocotb test module) and reach the
design's ports by Amaranth's names (`<bundle>__<signal>`, see `rtl.emit.port_name`), or by
the XRT top's names (`<bundle>_<signal>`) with `separator=XRT_SEPARATOR`.

Timing discipline, the same in every model so they work alike on Icarus and Verilator: inputs
are driven just after the falling clock edge, and the handshake outcome is sampled in the
read-only phase of that same time step, when the design's combinational outputs have settled
on the new inputs; a transfer sampled there happens at the next rising edge.

`AxiMemory` checks the AXI4 rules a master must keep (INCR bursts of at most 256 beats that do
not cross 4 KiB, full-width beat-aligned transfers, WLAST on the last beat only, stable
payload while VALID waits for READY) and records every violation in `violations`; `check()`
raises if there is any. Random READY/VALID gaps (`stall`) exercise the master's flow control.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import cocotb
from amaranth.hdl import Shape
from cocotb.triggers import FallingEdge, ReadOnly

from .interfaces import AXI_BOUNDARY_BYTES, AXI_MAX_BURST_BEATS, Burst, Resp


AMARANTH_SEPARATOR = "__"  # Amaranth core ports: m_axi_hbm00__awaddr
XRT_SEPARATOR = "_"  # the XRT top's ports: m_axi_hbm00_awaddr


class _Port:
    """The signals of one bundle: `port.awvalid` is `dut.<bundle><separator>awvalid`."""

    def __init__(self, dut, bundle: str, separator: str = AMARANTH_SEPARATOR):
        self._dut = dut
        self._prefix = bundle + separator

    def __getattr__(self, name: str):
        return getattr(self._dut, self._prefix + name)


async def _drive_phase(clk) -> None:
    await FallingEdge(clk)


async def _sample_phase() -> None:
    await ReadOnly()


class AxiLiteHost:
    """Drives an AXI4-Lite slave port the way the host (XRT) does: one access at a time."""

    def __init__(self, dut, bundle: str, clk, max_wait_cycles: int = 1000, separator: str = AMARANTH_SEPARATOR):
        self.bus = _Port(dut, bundle, separator)
        self.clk = clk
        self.max_wait_cycles = max_wait_cycles
        for name in ("awvalid", "wvalid", "bready", "arvalid", "rready"):
            getattr(self.bus, name).value = 0

    async def write(self, addr: int, value: int, strobe: int = 0xF) -> int:
        """Write one 32-bit register; returns BRESP."""
        bus = self.bus
        await _drive_phase(self.clk)
        bus.awaddr.value, bus.awprot.value, bus.awvalid.value = addr, 0, 1
        bus.wdata.value, bus.wstrb.value, bus.wvalid.value = value & 0xFFFFFFFF, strobe, 1
        bus.bready.value = 1
        for _ in range(self.max_wait_cycles):
            await _sample_phase()
            aw_fire = bool(bus.awvalid.value) and bool(bus.awready.value)
            w_fire = bool(bus.wvalid.value) and bool(bus.wready.value)
            b_fire = bool(bus.bvalid.value)  # BREADY is high throughout
            resp = int(bus.bresp.value) if b_fire else 0
            await _drive_phase(self.clk)
            if aw_fire:
                bus.awvalid.value = 0
            if w_fire:
                bus.wvalid.value = 0
            if b_fire:
                bus.bready.value = 0
                return resp
        raise TimeoutError(f"AXI4-Lite write to 0x{addr:x}: no response in {self.max_wait_cycles} cycles")

    async def read(self, addr: int) -> int:
        """Read one 32-bit register; raises on a non-OKAY response."""
        bus = self.bus
        await _drive_phase(self.clk)
        bus.araddr.value, bus.arprot.value, bus.arvalid.value, bus.rready.value = addr, 0, 1, 1
        for _ in range(self.max_wait_cycles):
            await _sample_phase()
            ar_fire = bool(bus.arvalid.value) and bool(bus.arready.value)
            r_fire = bool(bus.rvalid.value)  # RREADY is high throughout
            data, resp = (int(bus.rdata.value), int(bus.rresp.value)) if r_fire else (0, 0)
            await _drive_phase(self.clk)
            if ar_fire:
                bus.arvalid.value = 0
            if r_fire:
                bus.rready.value = 0
                if resp != Resp.OKAY:
                    raise AssertionError(f"AXI4-Lite read of 0x{addr:x} answered {Resp(resp).name}")
                return data
        raise TimeoutError(f"AXI4-Lite read of 0x{addr:x}: no data in {self.max_wait_cycles} cycles")


def pack(layout, **fields: int) -> int:
    """An integer holding `fields` at their offsets in an Amaranth StructLayout (for payload ports)."""
    value = 0
    for name, field_value in fields.items():
        field = layout[name]
        value |= (field_value & ((1 << Shape.cast(field.shape).width) - 1)) << field.offset
    return value


class StreamSource:
    """Drives an Amaranth `stream.Signature` input port (`<bundle>__valid/payload/ready`) from a
    queue of payloads, with random VALID gaps (`stall`)."""

    def __init__(self, dut, bundle: str, clk, *, stall: float = 0.0, seed: int = 0):
        self.bus = _Port(dut, bundle)
        self.clk = clk
        self.stall = stall
        self.rng = random.Random(seed)
        self.queue: deque[int] = deque()
        self.sent = 0
        self.bus.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, *payloads: int) -> None:
        self.queue.extend(payloads)

    @property
    def idle(self) -> bool:
        return not self.queue

    async def _run(self) -> None:
        shown = False
        while True:
            await _drive_phase(self.clk)
            if not shown and self.queue and self.rng.random() >= self.stall:
                self.bus.payload.value = self.queue[0]
                shown = True
            self.bus.valid.value = int(shown)
            await _sample_phase()
            if shown and self.bus.ready.value:
                self.queue.popleft()
                self.sent += 1
                shown = False


class StreamSink:
    """Takes payloads from an Amaranth `stream.Signature` output port into `received`, with
    random READY gaps (`stall`)."""

    def __init__(self, dut, bundle: str, clk, *, stall: float = 0.0, seed: int = 0):
        self.bus = _Port(dut, bundle)
        self.clk = clk
        self.stall = stall
        self.rng = random.Random(seed)
        self.received: list[int] = []
        self.bus.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await _drive_phase(self.clk)
            self.bus.ready.value = int(self.rng.random() >= self.stall)
            await _sample_phase()
            if self.bus.valid.value and self.bus.ready.value:
                self.received.append(int(self.bus.payload.value))


@dataclass(frozen=True)
class BurstRecord:
    """A burst the memory accepted."""

    write: bool
    addr: int
    beats: int


DEFAULT_READ_LATENCY = 2  # cycles from an accepted AR to its first R beat


class AxiMemory:
    """A byte-addressed memory behind an AXI4 slave port, with protocol checks.

    stall: probability that READY (AR, AW, W) or VALID (R, B) is withheld in a cycle.
    read_latency: cycles from an accepted AR to its first R beat.
    error_ranges: [(start, end)) byte ranges that answer SLVERR.
    Call `check()` at the end of a test: it raises on any recorded protocol violation.
    """

    def __init__(self, dut, bundle: str, clk, size: int, *, data_width: int, stall: float = 0.0,
                 read_latency: int = DEFAULT_READ_LATENCY, seed: int = 0, error_ranges: tuple[tuple[int, int], ...] = (),
                 separator: str = AMARANTH_SEPARATOR):
        self.bus = _Port(dut, bundle, separator)
        self.clk = clk
        self.mem = bytearray(size)
        self.beat_bytes = data_width // 8
        self.stall = stall
        self.read_latency = read_latency
        self.rng = random.Random(seed)
        self.error_ranges = error_ranges
        self.bursts: list[BurstRecord] = []
        self.violations: list[str] = []
        self._reads: deque = deque()  # (ready cycle, addr, beats, resp)
        self._writes: deque = deque()  # (addr, beats)
        self._wbeats: deque = deque()  # (data, strobe, last)
        self._responses: deque = deque()
        self.cycle = 0
        self._waiting: dict[str, tuple] = {}  # channel -> payload shown with VALID but not yet taken
        for name in ("arready", "awready", "wready", "rvalid", "bvalid"):
            getattr(self.bus, name).value = 0
        self._tasks = [cocotb.start_soon(self._run())]

    # ---- public helpers

    def write_bytes(self, addr: int, payload: bytes) -> None:
        self.mem[addr:addr + len(payload)] = payload

    def read_bytes(self, addr: int, length: int) -> bytes:
        return bytes(self.mem[addr:addr + length])

    def check(self) -> None:
        if self.violations:
            raise AssertionError(f"{len(self.violations)} AXI4 protocol violations, first: "
                                 + "; ".join(self.violations[:5]))

    # ---- the model

    def _go(self) -> bool:
        return self.rng.random() >= self.stall

    def _resp_for(self, addr: int, length: int) -> int:
        for start, end in self.error_ranges:
            if addr < end and start < addr + length:
                return Resp.SLVERR
        return Resp.OKAY

    def _check_address(self, kind: str, addr: int, length: int, size: int, burst: int) -> int:
        beats = length + 1
        where = f"{kind} burst at 0x{addr:x} ({beats} beats)"
        if burst != Burst.INCR:
            self.violations.append(f"{where}: burst type {burst}, expected INCR")
        if beats > AXI_MAX_BURST_BEATS:
            self.violations.append(f"{where}: more than {AXI_MAX_BURST_BEATS} beats")
        if 1 << size != self.beat_bytes:
            self.violations.append(f"{where}: size {1 << size} bytes, expected full width {self.beat_bytes}")
        if addr % self.beat_bytes:
            self.violations.append(f"{where}: not aligned to the {self.beat_bytes}-byte beat")
        end = addr + beats * self.beat_bytes
        if addr // AXI_BOUNDARY_BYTES != (end - 1) // AXI_BOUNDARY_BYTES:
            self.violations.append(f"{where}: crosses a {AXI_BOUNDARY_BYTES}-byte boundary")
        if end > len(self.mem):
            self.violations.append(f"{where}: beyond the {len(self.mem)}-byte memory")
        self.bursts.append(BurstRecord(kind == "write", addr, beats))
        return beats

    async def _run(self) -> None:
        bus = self.bus
        r_active = None  # [addr, beats left, resp, beat index]
        r_shown = None  # payload shown on R while waiting for RREADY
        while True:
            await _drive_phase(self.clk)
            self.cycle += 1
            # drive READY of the address and W channels
            bus.arready.value = int(self._go())
            bus.awready.value = int(self._go())
            bus.wready.value = int(self._go())
            # R: keep a shown beat until taken; otherwise maybe show the next one
            if r_shown is None:
                if r_active is None and self._reads and self._reads[0][0] <= self.cycle:
                    _, addr, beats, resp = self._reads.popleft()
                    r_active = [addr, beats, resp, 0]
                if r_active is not None and self._go():
                    addr, left, resp, index = r_active
                    beat_addr = addr + index * self.beat_bytes
                    data = int.from_bytes(self.mem[beat_addr:beat_addr + self.beat_bytes], "little")
                    r_shown = (data, resp, int(left == 1))
            bus.rvalid.value = int(r_shown is not None)
            if r_shown is not None:
                bus.rdata.value, bus.rresp.value, bus.rlast.value = r_shown
            # B: show the oldest response
            b_shown = self._responses[0] if self._responses and self._go() else None
            bus.bvalid.value = int(b_shown is not None)
            if b_shown is not None:
                bus.bresp.value = b_shown

            await _sample_phase()
            for channel, fields in self._PAYLOADS.items():
                self._check_stable(channel, fields)
            if bus.arvalid.value and bus.arready.value:
                addr = int(bus.araddr.value)
                beats = self._check_address("read", addr, int(bus.arlen.value), int(bus.arsize.value),
                                            int(bus.arburst.value))
                self._reads.append((self.cycle + self.read_latency, addr, beats,
                                    self._resp_for(addr, beats * self.beat_bytes)))
            if bus.awvalid.value and bus.awready.value:
                addr = int(bus.awaddr.value)
                beats = self._check_address("write", addr, int(bus.awlen.value), int(bus.awsize.value),
                                            int(bus.awburst.value))
                self._writes.append([addr, beats, 0])
            if bus.wvalid.value and bus.wready.value:
                self._wbeats.append((int(bus.wdata.value), int(bus.wstrb.value), int(bus.wlast.value)))
            if r_shown is not None and bus.rready.value:
                r_shown = None
                r_active[1] -= 1
                r_active[3] += 1
                if r_active[1] == 0:
                    r_active = None
            if b_shown is not None and bus.bready.value:
                self._responses.popleft()
            self._retire_write_beats()

    _PAYLOADS = {"ar": ("araddr", "arlen", "arsize", "arburst"), "aw": ("awaddr", "awlen", "awsize", "awburst"),
                 "w": ("wdata", "wstrb", "wlast")}

    def _check_stable(self, channel: str, fields: tuple[str, ...]) -> None:
        """Once VALID is up, it and the payload must hold until READY (AXI4 handshake rule)."""
        valid = bool(getattr(self.bus, f"{channel}valid").value)
        ready = bool(getattr(self.bus, f"{channel}ready").value)
        shown = self._waiting.pop(channel, None)
        payload = tuple(int(getattr(self.bus, f).value) for f in fields) if valid else None
        if shown is not None and payload != shown:
            what = "dropped VALID" if payload is None else "changed its payload"
            self.violations.append(f"{channel.upper()} channel {what} before READY (cycle {self.cycle})")
        if valid and not ready:
            self._waiting[channel] = payload

    def _retire_write_beats(self) -> None:
        while self._wbeats and self._writes:
            data, strobe, last = self._wbeats.popleft()
            burst = self._writes[0]
            addr, beats, index = burst
            beat_addr = addr + index * self.beat_bytes
            raw = data.to_bytes(self.beat_bytes, "little")
            if strobe == (1 << self.beat_bytes) - 1 and beat_addr + self.beat_bytes <= len(self.mem):
                self.mem[beat_addr:beat_addr + self.beat_bytes] = raw
            else:
                for i in range(self.beat_bytes):
                    if strobe >> i & 1 and beat_addr + i < len(self.mem):
                        self.mem[beat_addr + i] = raw[i]
            burst[2] += 1
            expected_last = burst[2] == beats
            if bool(last) != expected_last:
                self.violations.append(f"write burst at 0x{addr:x}: WLAST={last} on beat {burst[2]} of {beats}")
            if expected_last:
                self._writes.popleft()
                self._responses.append(self._resp_for(addr, beats * self.beat_bytes))
