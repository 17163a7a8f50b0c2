"""AXI4 burst master to HBM: transfer commands in, INCR bursts out.

A transfer command names a byte address and a number of full-width beats. `BurstSplitter`
cuts it into INCR bursts of at most `max_burst_beats` (<= 256) beats that never cross a 4 KiB
boundary; `AxiMaster` issues those bursts on the AR channel (reads, data out on a stream) and
on the AW channel (writes, data in on a stream, WLAST placed from a queue of the issued burst
lengths). Every beat is full width (AxSIZE = log2 of the bytes per beat, all write strobes
set); addresses must be beat-aligned, their low bits are ignored. Responses come back in order
(one ID), so the master tracks outstanding beats and bursts with counters: `read_idle` /
`write_idle` are high when no command is in progress and every beat has arrived / every write
response is in. A non-OKAY response sets the sticky `error` until `clear_error`.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .interfaces import (AXI_ADDR_WIDTH, AXI_BOUNDARY_BYTES, AXI_MAX_BURST_BEATS, CACHE_NORMAL_BUFFERABLE,
                         PROT_UNPRIVILEGED_SECURE_DATA, AXI4Signature, Burst, Resp)

BEATS_WIDTH = 32


# A transfer: `beats` full-width beats starting at byte address `addr` (addr in the low bits).
TransferCommand = data.StructLayout({"addr": AXI_ADDR_WIDTH, "beats": BEATS_WIDTH})
# One AXI burst: start address and AxLEN (beats - 1).
BurstRequest = data.StructLayout({"addr": AXI_ADDR_WIDTH, "len": 8})


def write_beat_layout(data_width: int) -> data.StructLayout:
    """A write beat with its byte strobes (`AxiMaster(write_strobes=True)`)."""
    return data.StructLayout({"data": data_width, "strb": data_width // 8})


def plan_bursts(addr: int, beats: int, beat_bytes: int, max_burst_beats: int) -> list[tuple[int, int]]:
    """The (address, beats) bursts `BurstSplitter` issues for a transfer: the reference model
    for tests and for counting bursts in the cycle model."""
    _check_burst(max_burst_beats, beat_bytes)
    addr -= addr % beat_bytes
    bursts = []
    while beats:
        to_boundary = (AXI_BOUNDARY_BYTES - addr % AXI_BOUNDARY_BYTES) // beat_bytes
        n = min(beats, max_burst_beats, to_boundary)
        bursts.append((addr, n))
        addr += n * beat_bytes
        beats -= n
    return bursts


def _check_burst(max_burst_beats: int, beat_bytes: int) -> None:
    if not 1 <= max_burst_beats <= AXI_MAX_BURST_BEATS:
        raise ValueError(f"max_burst_beats {max_burst_beats} is outside 1..{AXI_MAX_BURST_BEATS} (AXI4 INCR).")
    if max_burst_beats * beat_bytes > AXI_BOUNDARY_BYTES:
        raise ValueError(f"{max_burst_beats} beats of {beat_bytes} bytes exceed the {AXI_BOUNDARY_BYTES}-byte "
                         "boundary a burst may not cross.")


class BurstSplitter(wiring.Component):
    """Transfer commands in, bursts out: each at most `max_burst_beats` beats and inside one 4 KiB page.

    A command of zero beats is accepted and produces no burst. `busy` is high while a command
    still has bursts to issue.
    """

    def __init__(self, beat_bytes: int, max_burst_beats: int):
        _check_burst(max_burst_beats, beat_bytes)
        self.beat_bytes = beat_bytes
        self.max_burst_beats = max_burst_beats
        super().__init__({
            "cmd": In(stream.Signature(TransferCommand)),
            "burst": Out(stream.Signature(BurstRequest)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        shift = self.beat_bytes.bit_length() - 1
        addr = Signal(AXI_ADDR_WIDTH)
        remaining = Signal(BEATS_WIDTH)
        to_boundary = Signal(range(AXI_BOUNDARY_BYTES // self.beat_bytes + 1))
        beats = Signal(range(AXI_MAX_BURST_BEATS + 1))
        capped = Signal.like(beats)
        m.d.comb += [
            to_boundary.eq((AXI_BOUNDARY_BYTES - addr[:12]) >> shift),
            capped.eq(Mux(remaining < self.max_burst_beats, remaining, self.max_burst_beats)),
            beats.eq(Mux(to_boundary < capped, to_boundary, capped)),
            self.busy.eq(remaining != 0),
            self.cmd.ready.eq(remaining == 0),
            self.burst.valid.eq(remaining != 0),
            self.burst.payload.addr.eq(addr),
            self.burst.payload.len.eq(beats - 1),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [addr.eq(self.cmd.payload.addr & ~(self.beat_bytes - 1)),
                         remaining.eq(self.cmd.payload.beats)]
        with m.Elif(self.burst.valid & self.burst.ready):
            m.d.sync += [addr.eq(addr + (beats << shift)), remaining.eq(remaining - beats)]
        return m


class AxiMaster(wiring.Component):
    """One AXI4 master port with a read engine and a write engine.

    Ports: `axi` (AXI4, to an HBM pseudo-channel), `read_cmd` / `write_cmd` (TransferCommand
    streams), `read_data` (stream of beats read, in address order), `write_data` (stream of
    beats to write, consumed in address order), `read_idle`, `write_idle`, `error`, `clear_error`.
    `max_outstanding_writes` bounds the issued-but-unwritten bursts (the WLAST queue depth).
    With `write_strobes`, `write_data` carries `WriteBeat`s (data and WSTRB) instead of bare data.
    """

    def __init__(self, data_width: int, max_burst_beats: int, max_outstanding_writes: int = 8,
                 write_strobes: bool = False):
        self.axi_signature = AXI4Signature(data_width)
        _check_burst(max_burst_beats, self.axi_signature.beat_bytes)
        self.data_width = data_width
        self.max_burst_beats = max_burst_beats
        self.max_outstanding_writes = max_outstanding_writes
        self.write_strobes = write_strobes
        beat = write_beat_layout(data_width) if write_strobes else data_width
        super().__init__({
            "axi": Out(self.axi_signature),
            "read_cmd": In(stream.Signature(TransferCommand)),
            "read_data": Out(stream.Signature(data_width)),
            "write_cmd": In(stream.Signature(TransferCommand)),
            "write_data": In(stream.Signature(beat)),
            "read_idle": Out(1), "write_idle": Out(1),
            "error": Out(1), "clear_error": In(1),
        })

    @classmethod
    def for_config(cls, config) -> AxiMaster:
        """A master sized by a HardwareConfig's engine (data width, burst length)."""
        return cls(config.engine.axi_data_width_bits, config.engine.axi_burst_len)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        beat_bytes = self.axi_signature.beat_bytes
        m.submodules.read_splitter = reads = BurstSplitter(beat_bytes, self.max_burst_beats)
        m.submodules.write_splitter = writes = BurstSplitter(beat_bytes, self.max_burst_beats)
        m.submodules.wlast_queue = lengths = fifo.SyncFIFO(width=8, depth=self.max_outstanding_writes)

        for ch in ("ar", "aw"):
            m.d.comb += [getattr(axi, f"{ch}size").eq(self.axi_signature.size_code),
                         getattr(axi, f"{ch}burst").eq(Burst.INCR),
                         getattr(axi, f"{ch}cache").eq(CACHE_NORMAL_BUFFERABLE),
                         getattr(axi, f"{ch}prot").eq(PROT_UNPRIVILEGED_SECURE_DATA)]

        # ---- reads: bursts on AR, beats from R straight to the stream
        wiring.connect(m, wiring.flipped(self.read_cmd), reads.cmd)
        pending_beats = Signal(BEATS_WIDTH + 1)
        ar_fire = axi.arvalid & axi.arready
        r_fire = axi.rvalid & axi.rready
        m.d.comb += [
            axi.araddr.eq(reads.burst.payload.addr), axi.arlen.eq(reads.burst.payload.len),
            axi.arvalid.eq(reads.burst.valid), reads.burst.ready.eq(axi.arready),
            self.read_data.valid.eq(axi.rvalid), self.read_data.payload.eq(axi.rdata),
            axi.rready.eq(self.read_data.ready),
            self.read_idle.eq(~reads.busy & (pending_beats == 0)),
        ]
        m.d.sync += pending_beats.eq(pending_beats + Mux(ar_fire, axi.arlen + 1, 0) - r_fire)

        # ---- writes: bursts on AW (their lengths queued for WLAST), beats from the stream on W.
        # At most max_outstanding_writes bursts wait for their response; `room` only falls at an
        # AW handshake, so AWVALID never drops before AWREADY.
        wiring.connect(m, wiring.flipped(self.write_cmd), writes.cmd)
        pending_responses = Signal(range(self.max_outstanding_writes + 1))
        room = Signal()
        m.d.comb += [
            room.eq((pending_responses < self.max_outstanding_writes) & lengths.w_rdy),
            axi.awaddr.eq(writes.burst.payload.addr), axi.awlen.eq(writes.burst.payload.len),
            axi.awvalid.eq(writes.burst.valid & room),
            writes.burst.ready.eq(axi.awready & room),
            lengths.w_en.eq(axi.awvalid & axi.awready), lengths.w_data.eq(writes.burst.payload.len),
        ]
        beat = Signal(8)
        last = Signal()
        w_fire = axi.wvalid & axi.wready
        m.d.comb += [
            last.eq(beat == lengths.r_data),
            axi.wvalid.eq(self.write_data.valid & lengths.r_rdy),
            axi.wdata.eq(self.write_data.payload.data if self.write_strobes else self.write_data.payload),
            axi.wstrb.eq(self.write_data.payload.strb if self.write_strobes else (1 << beat_bytes) - 1),
            axi.wlast.eq(last),
            self.write_data.ready.eq(axi.wready & lengths.r_rdy),
            lengths.r_en.eq(w_fire & last),
        ]
        with m.If(w_fire):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))
        aw_fire = axi.awvalid & axi.awready
        b_fire = axi.bvalid & axi.bready
        m.d.comb += [axi.bready.eq(1),
                     self.write_idle.eq(~writes.busy & (pending_responses == 0))]
        m.d.sync += pending_responses.eq(pending_responses + aw_fire - b_fire)

        # ---- errors
        bad = (r_fire & (axi.rresp != Resp.OKAY)) | (b_fire & (axi.bresp != Resp.OKAY))
        with m.If(bad):
            m.d.sync += self.error.eq(1)
        with m.Elif(self.clear_error):
            m.d.sync += self.error.eq(0)
        return m
