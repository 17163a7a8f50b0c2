"""The DMA of one HBM port: row transfers between a pseudo-channel and the buffers at any alignment.

Every HBM port of the engine (one AXI4 master, bound to one pseudo-channel) has a `PortDma`:

- a LOAD row engine (`LoadEngine`): a row request names HBM bytes `[addr, addr + nbytes)` and a
  buffer byte address; the engine issues one read transfer for the beats covering the range
  (`ceil((addr mod B + nbytes) / B)` beats of B bytes), labels the beats with the bytes of the
  row they hold (the first beat from byte `addr mod B`), re-packs them (`Packer`) and writes
  them through a `ByteWriter` (byte enables at both ends of the buffer range). Up to
  `META_DEPTH` rows have their read issued ahead of the row being written, so the HBM latency
  of the next rows overlaps the current one;
- a STORE row engine (`StoreEngine`): reads the buffer range with a `WordReader` (packed B-byte
  chunks), shifts it to the HBM alignment by `addr mod B` phantom bytes in front (a `Packer`),
  and hands the beats with their write strobes (first beat without the phantom bytes, last beat
  only the row's bytes) to the master's write stream;
- request FIFOs (`REQUEST_DEPTH` rows each) in front of both engines, so the LOAD and STORE
  units spread a striped transfer's rows over all its ports at one row per cycle and the ports
  move them in parallel;
- on port 0 only, a `ReadArbiter` that shares the read channel between the LOAD engine and the
  instruction fetch (rtl/engine/issue.py): instructions come through `m_axi_hbm00`.

Each engine has its own buffer port (a write port for LOAD, a read port for STORE), so all ports
run at once. `load_done` / `store_done` pulse once per finished row: LOAD when the row's last
buffer word is written, STORE when its last beat went to the master (the write responses are
then tracked by the master's `write_idle`). `read_error` / `write_error` pulse on a non-OKAY
response of a LOAD read / a write; `fetch_error` on one of an instruction fetch.

Cycles, with the memory answering every beat at once after a read latency `Lr` (cycles from the
AR handshake to the first R beat as `rtl/axi_models.AxiMemory` counts it) and never stalling.
Every stage between the bus and the buffer is a one-cycle gearbox (a `Packer`): an output chunk
leaves the cycle after the input that completes it (the transfer's last chunk the cycle after the
last input) and one cycle after the previous output. `gearbox_times` is that rule; a row's
*stream time* is the cycle its last chunk leaves the last gearbox when its first input enters at
cycle 1:

- LOAD, `load_row_cycles`: beats (the first holding `B − a mod B` bytes) -> Packer(B, B) ->
  ByteWriter's Packer(B, W) preceded by its `b mod W` phantom bytes; the row costs its stream
  time + 2 (the writer's command and its return to idle). Rows queued back to back on one port
  take `Lr + Σ load_row_cycles` from the first request taken to the last `load_done`, provided
  the reads issued ahead (`META_DEPTH` rows) hide the latency. Aligned rows with W = B:
  `beats + 4` cycles each, so long rows stream at one beat per cycle.
- STORE, `store_row_cycles`: buffer words (the first holding `W − b mod W` bytes) -> the
  WordReader's Packer(W, B) -> Packer(B, B) preceded by the `a mod B` phantom bytes; the row
  costs its stream time + 4 (request, command, the reader's port and FIFO cycles) and rows run
  one after another: `Σ store_row_cycles` to the last `store_done`; the instruction then waits
  for the write responses. Aligned rows with W = B: `beats + 6` cycles each.

`tests/rtl/engine/test_dma.py` checks the bytes at random alignments under back-pressure and these cycle
counts exactly.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.rtl.axi_master import AxiMaster, TransferCommand, write_beat_layout
from llmfab.rtl.interfaces import AXI_ADDR_WIDTH, AXI4Signature, Resp

from .buffers import BUFFER_ID_BITS, BufferGeometry, read_port_signature, write_port_signature
from .bytestream import ADDR_BITS, LENGTH_BITS, ByteWriter, Packer, WordReader, byte_mask

# One row of a transfer: HBM bytes [addr, addr + nbytes) (absolute device address) <-> the
# buffer bytes from `buf_addr` of buffer `buf`. `nbytes` is never 0.
RowRequest = data.StructLayout({"addr": unsigned(AXI_ADDR_WIDTH), "buf": unsigned(BUFFER_ID_BITS),
                                "buf_addr": unsigned(ADDR_BITS), "nbytes": unsigned(LENGTH_BITS)})

REQUEST_DEPTH = 4
META_DEPTH = 4


def gearbox_times(inputs: list[tuple[int, int]], out_bytes: int) -> list[tuple[int, int]]:
    """(cycle, bytes) of the packed chunks a Packer emits for input chunks `inputs` = [(cycle,
    bytes)] of one transfer (see the module docstring)."""
    outs, total, emitted, prev = [], 0, 0, None
    for k, (cycle, nbytes) in enumerate(inputs):
        total += nbytes
        last = k == len(inputs) - 1
        while total - emitted >= out_bytes or (last and total > emitted):
            prev = cycle + 1 if prev is None else max(prev + 1, cycle + 1)
            size = min(out_bytes, total - emitted)
            outs.append((prev, size))
            emitted += size
    return outs


def _pieces(offset: int, nbytes: int, unit: int) -> list[int]:
    """Bytes of a range in each `unit`-byte unit it touches, the first from byte `offset % unit`."""
    pieces, first = [], offset % unit
    while nbytes:
        take = min(unit - first, nbytes)
        pieces.append(take)
        nbytes -= take
        first = 0
    return pieces


def _stream_time(source: list[int], mid_bytes: int, lead: int, out_bytes: int) -> int:
    first = gearbox_times([(k + 1, n) for k, n in enumerate(source)], mid_bytes)
    return gearbox_times(([(0, lead)] if lead else []) + first, out_bytes)[-1][0]


def load_row_cycles(hbm_addr: int, buf_addr: int, nbytes: int, beat_bytes: int, word_bytes: int) -> int:
    """Cycles one LOAD row occupies its port's data path (module docstring)."""
    return _stream_time(_pieces(hbm_addr, nbytes, beat_bytes), beat_bytes, buf_addr % word_bytes, word_bytes) + 2


def store_row_cycles(hbm_addr: int, buf_addr: int, nbytes: int, beat_bytes: int, word_bytes: int) -> int:
    """Cycles one STORE row occupies its port's data path (module docstring)."""
    return _stream_time(_pieces(buf_addr, nbytes, word_bytes), beat_bytes, hbm_addr % beat_bytes, beat_bytes) + 4


def label_beats(m: Module, beats, packer, labelling, first, left, beat_bytes: int) -> None:
    """While `labelling`, pass the `beats` stream into `packer` as chunks holding the transfer's
    bytes: the first from byte `first`, `left` bytes in all (both registers, updated here; the
    last chunk clears `labelling`)."""
    count = Signal(range(beat_bytes + 1))
    m.d.comb += count.eq(Mux(left < beat_bytes - first, left, beat_bytes - first))
    chunk = packer.i.payload
    m.d.comb += [packer.i.valid.eq(labelling & beats.valid), chunk.data.eq(beats.payload),
                 chunk.first.eq(first), chunk.count.eq(count), chunk.last.eq(left == count),
                 beats.ready.eq(labelling & packer.i.ready)]
    with m.If(packer.i.valid & packer.i.ready):
        m.d.sync += [first.eq(0), left.eq(left - count)]
        with m.If(left == count):
            m.d.sync += labelling.eq(0)


def _beats(addr, nbytes, beat_bytes: int):
    """Beats covering HBM bytes [addr, addr + nbytes)."""
    shift = (beat_bytes - 1).bit_length()
    low = addr[:shift] if shift else 0
    return (low + nbytes + beat_bytes - 1) >> shift


class LoadEngine(wiring.Component):
    """Row requests in, read transfers to an AxiMaster out, the rows' bytes into a buffer.

    Members: `req` (RowRequest stream), `read_cmd` / `read_data` (to the master), `port` (buffer
    write port), `row_done` (pulse per row written).
    """

    def __init__(self, geometry: BufferGeometry, beat_bytes: int):
        self.geometry, self.beat_bytes = geometry, beat_bytes
        super().__init__({"req": In(stream.Signature(RowRequest)),
                          "read_cmd": Out(stream.Signature(TransferCommand)),
                          "read_data": In(stream.Signature(8 * beat_bytes)),
                          "port": Out(write_port_signature(geometry)),
                          "row_done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        bb = self.beat_bytes
        shift = (bb - 1).bit_length()
        meta_layout = data.StructLayout({"first": unsigned(max(1, shift)), "buf": unsigned(BUFFER_ID_BITS),
                                         "buf_addr": unsigned(ADDR_BITS), "nbytes": unsigned(LENGTH_BITS)})
        m.submodules.meta = meta = fifo.SyncFIFO(width=meta_layout.size, depth=META_DEPTH)
        m.submodules.packer = packer = Packer(bb, bb)
        m.submodules.writer = writer = ByteWriter(self.geometry, bb)
        wiring.connect(m, packer.o, writer.i)
        wiring.connect(m, writer.port, wiring.flipped(self.port))

        # issue: one read transfer per row, its labels queued for the data path
        req = self.req.payload
        entry = Signal(meta_layout)
        m.d.comb += [
            entry.first.eq(req.addr[:shift] if shift else 0), entry.buf.eq(req.buf),
            entry.buf_addr.eq(req.buf_addr), entry.nbytes.eq(req.nbytes),
            self.read_cmd.valid.eq(self.req.valid & meta.w_rdy),
            self.read_cmd.payload.addr.eq(req.addr),
            self.read_cmd.payload.beats.eq(_beats(req.addr, req.nbytes, bb)),
            self.req.ready.eq(self.read_cmd.ready & meta.w_rdy),
            meta.w_en.eq(self.read_cmd.valid & self.read_cmd.ready),
            meta.w_data.eq(entry.as_value()),
        ]

        # data path: the head row's writer command, then its beats labelled with their bytes
        head = Signal(meta_layout)
        m.d.comb += head.as_value().eq(meta.r_data)
        labelling, writing = Signal(), Signal()
        first, left = Signal(range(bb)), Signal(LENGTH_BITS)
        issue = meta.r_rdy & ~labelling & writer.cmd.ready & ~writing
        m.d.comb += [writer.cmd.valid.eq(issue), writer.cmd.payload.buf.eq(head.buf),
                     writer.cmd.payload.addr.eq(head.buf_addr), writer.cmd.payload.nbytes.eq(head.nbytes),
                     meta.r_en.eq(issue)]
        with m.If(issue):
            m.d.sync += [labelling.eq(1), first.eq(head.first), left.eq(head.nbytes)]
        label_beats(m, self.read_data, packer, labelling, first, left, bb)
        # `writing` from the writer's command until it is idle again: then the row is in the buffer
        done = writing & writer.idle
        m.d.comb += self.row_done.eq(done)
        with m.If(issue):
            m.d.sync += writing.eq(1)
        with m.Elif(done):
            m.d.sync += writing.eq(0)
        return m


class StoreEngine(wiring.Component):
    """Row requests in, buffer bytes out as write transfers with strobes to an AxiMaster.

    Members: `req` (RowRequest stream), `write_cmd` / `write_data` (to a master built with
    `write_strobes=True`), `port` (buffer read port), `row_done` (pulse when a row's last beat
    is handed over).
    """

    def __init__(self, geometry: BufferGeometry, beat_bytes: int):
        self.geometry, self.beat_bytes = geometry, beat_bytes
        super().__init__({"req": In(stream.Signature(RowRequest)),
                          "write_cmd": Out(stream.Signature(TransferCommand)),
                          "write_data": Out(stream.Signature(write_beat_layout(8 * beat_bytes))),
                          "port": Out(read_port_signature(geometry)),
                          "row_done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        bb = self.beat_bytes
        shift = (bb - 1).bit_length()
        m.submodules.reader = reader = WordReader(self.geometry, bb)
        m.submodules.packer = packer = Packer(bb, bb)
        wiring.connect(m, reader.port, wiring.flipped(self.port))
        req = self.req.payload
        lead = Signal(range(bb))
        cmd_sent, read_sent, first_out = Signal(), Signal(), Signal()

        out = packer.o.payload
        strobe = Signal(bb)
        m.d.comb += [
            strobe.eq(byte_mask(m, out.count, bb) & Mux(first_out, ~byte_mask(m, lead, bb), (1 << bb) - 1)),
            self.write_data.valid.eq(packer.o.valid), self.write_data.payload.data.eq(out.data),
            self.write_data.payload.strb.eq(strobe), packer.o.ready.eq(self.write_data.ready),
        ]
        beat_out = packer.o.valid & packer.o.ready
        with m.If(beat_out):
            m.d.sync += first_out.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.req.valid):
                    m.d.sync += [lead.eq(req.addr[:shift] if shift else 0), cmd_sent.eq(0), read_sent.eq(0),
                                 first_out.eq(1)]
                    m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += [self.write_cmd.valid.eq(~cmd_sent), self.write_cmd.payload.addr.eq(req.addr),
                             self.write_cmd.payload.beats.eq(_beats(req.addr, req.nbytes, bb)),
                             reader.cmd.valid.eq(~read_sent), reader.cmd.payload.buf.eq(req.buf),
                             reader.cmd.payload.addr.eq(req.buf_addr), reader.cmd.payload.nbytes.eq(req.nbytes)]
                cmd_now = cmd_sent | self.write_cmd.ready
                read_now = read_sent | reader.cmd.ready
                m.d.sync += [cmd_sent.eq(cmd_now), read_sent.eq(read_now)]
                with m.If(cmd_now & read_now):
                    m.d.comb += self.req.ready.eq(1)
                    m.next = "LEAD"
            with m.State("LEAD"):  # phantom bytes below the HBM offset, so the row lands at addr mod B
                # (`first` is set here and in DATA, in the process driving the other payload bits: an
                # undriven input floats, and a lone constant process never runs on Icarus)
                m.d.comb += [packer.i.valid.eq(lead != 0), packer.i.payload.count.eq(lead),
                             packer.i.payload.first.eq(0)]
                with m.If((lead == 0) | packer.i.ready):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [packer.i.valid.eq(reader.o.valid), packer.i.payload.data.eq(reader.o.payload.data),
                             packer.i.payload.first.eq(0),
                             packer.i.payload.count.eq(reader.o.payload.count),
                             packer.i.payload.last.eq(reader.o.payload.last), reader.o.ready.eq(packer.i.ready)]
                with m.If(reader.o.valid & reader.o.ready & reader.o.payload.last):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(beat_out & out.last):
                    m.d.comb += self.row_done.eq(1)
                    m.next = "IDLE"
        return m


class ReadArbiter(wiring.Component):
    """Two requesters share one master's read channel: transfers in order, beats routed back.

    `cmd[i]` / `data[i]` face requester i (requester 1 wins a tie); `m_cmd` / `m_data` face the
    master. A small FIFO remembers whose transfer each issued command was and how many beats it
    has, so the in-order beats go back to their requester.
    """

    DEPTH = 4

    def __init__(self, data_width: int):
        self.data_width = data_width
        super().__init__({"cmd": In(stream.Signature(TransferCommand)).array(2),
                          "data": Out(stream.Signature(data_width)).array(2),
                          "m_cmd": Out(stream.Signature(TransferCommand)),
                          "m_data": In(stream.Signature(data_width))})

    def elaborate(self, platform):
        m = Module()
        tag = data.StructLayout({"owner": 1, "beats": 32})
        m.submodules.tags = tags = fifo.SyncFIFO(width=tag.size, depth=self.DEPTH)
        pick = Signal()
        m.d.comb += pick.eq(self.cmd[1].valid)
        chosen = Mux(pick, self.cmd[1].payload.as_value(), self.cmd[0].payload.as_value())
        entry = Signal(tag)
        m.d.comb += [
            self.m_cmd.valid.eq((self.cmd[0].valid | self.cmd[1].valid) & tags.w_rdy),
            self.m_cmd.payload.eq(chosen),
            self.cmd[1].ready.eq(pick & self.m_cmd.ready & tags.w_rdy),
            self.cmd[0].ready.eq(~pick & self.m_cmd.ready & tags.w_rdy),
            entry.owner.eq(pick), entry.beats.eq(self.m_cmd.payload.beats),
            tags.w_en.eq(self.m_cmd.valid & self.m_cmd.ready), tags.w_data.eq(entry.as_value()),
        ]
        head = Signal(tag)
        seen = Signal(32)
        m.d.comb += head.as_value().eq(tags.r_data)
        for i in range(2):
            m.d.comb += [self.data[i].valid.eq(tags.r_rdy & (head.owner == i) & self.m_data.valid),
                         self.data[i].payload.eq(self.m_data.payload)]
        m.d.comb += self.m_data.ready.eq(tags.r_rdy & Mux(head.owner, self.data[1].ready, self.data[0].ready))
        with m.If(self.m_data.valid & self.m_data.ready):
            with m.If(seen + 1 == head.beats):
                m.d.comb += tags.r_en.eq(1)
                m.d.sync += seen.eq(0)
            with m.Else():
                m.d.sync += seen.eq(seen + 1)
        return m


class PortDma(wiring.Component):
    """One HBM port: its AXI4 master, the LOAD and STORE row engines and their request FIFOs.

    Members: `axi` (the master bundle), `load_req` / `store_req` (RowRequest streams), `wport`
    (buffer write port of the LOAD engine), `rport` (buffer read port of the STORE engine),
    `load_done`, `store_done`, `write_idle`, `read_error`, `write_error`, and with `fetch`
    (port 0) the instruction fetch's `fetch_cmd` / `fetch_data` and `fetch_error`.
    """

    def __init__(self, geometry: BufferGeometry, data_width: int, max_burst_beats: int, fetch: bool = False):
        self.geometry, self.data_width, self.max_burst_beats, self.fetch = geometry, data_width, max_burst_beats, fetch
        self.beat_bytes = data_width // 8
        if self.beat_bytes > geometry.word_bytes:
            self._MustUse__used = True
            raise ValueError(f"an AXI beat of {self.beat_bytes} bytes is wider than the {geometry.word_bytes}-byte "
                             "buffer word; the engine geometry makes words at least a beat wide")
        members = {"axi": Out(AXI4Signature(data_width)),
                   "load_req": In(stream.Signature(RowRequest)), "store_req": In(stream.Signature(RowRequest)),
                   "wport": Out(write_port_signature(geometry)), "rport": Out(read_port_signature(geometry)),
                   "load_done": Out(1), "store_done": Out(1), "write_idle": Out(1),
                   "read_error": Out(1), "write_error": Out(1)}
        if fetch:
            members.update({"fetch_cmd": In(stream.Signature(TransferCommand)),
                            "fetch_data": Out(stream.Signature(data_width)), "fetch_error": Out(1)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.master = master = AxiMaster(self.data_width, self.max_burst_beats, write_strobes=True)
        m.submodules.load = load = LoadEngine(self.geometry, self.beat_bytes)
        m.submodules.store = store = StoreEngine(self.geometry, self.beat_bytes)
        for name, engine in (("load", load), ("store", store)):
            queue = stream_fifo(m, f"{name}_queue", RowRequest, REQUEST_DEPTH)
            wiring.connect(m, wiring.flipped(getattr(self, f"{name}_req")), queue.i)
            wiring.connect(m, queue.o, engine.req)
        wiring.connect(m, wiring.flipped(self.axi), master.axi)
        wiring.connect(m, load.port, wiring.flipped(self.wport))
        wiring.connect(m, store.port, wiring.flipped(self.rport))
        wiring.connect(m, store.write_cmd, master.write_cmd)
        wiring.connect(m, store.write_data, master.write_data)
        axi = self.axi
        r_bad = axi.rvalid & axi.rready & (axi.rresp != Resp.OKAY)
        if self.fetch:
            m.submodules.arbiter = arbiter = ReadArbiter(self.data_width)
            wiring.connect(m, load.read_cmd, arbiter.cmd[0])
            wiring.connect(m, wiring.flipped(self.fetch_cmd), arbiter.cmd[1])
            wiring.connect(m, arbiter.data[0], load.read_data)
            wiring.connect(m, arbiter.data[1], wiring.flipped(self.fetch_data))
            wiring.connect(m, arbiter.m_cmd, master.read_cmd)
            wiring.connect(m, master.read_data, arbiter.m_data)
            m.d.comb += [self.read_error.eq(r_bad & arbiter.data[0].valid),
                         self.fetch_error.eq(r_bad & arbiter.data[1].valid)]
        else:
            wiring.connect(m, load.read_cmd, master.read_cmd)
            wiring.connect(m, master.read_data, load.read_data)
            m.d.comb += self.read_error.eq(r_bad)
        m.d.comb += [self.load_done.eq(load.row_done), self.store_done.eq(store.row_done),
                     self.write_idle.eq(master.write_idle),
                     self.write_error.eq(axi.bvalid & axi.bready & (axi.bresp != Resp.OKAY)),
                     master.clear_error.eq(0)]
        return m


class StreamFifo(wiring.Component):
    """A FIFO of `depth` payloads between two streams: `i` in, `o` out, `level`."""

    def __init__(self, layout, depth: int):
        self.depth = depth
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout)),
                          "level": Out(range(depth + 1))})

    def elaborate(self, platform):
        m = Module()
        payload_in, payload_out = Value.cast(self.i.payload), Value.cast(self.o.payload)
        m.submodules.fifo = q = fifo.SyncFIFO(width=len(payload_in), depth=self.depth)
        m.d.comb += [q.w_data.eq(payload_in), q.w_en.eq(self.i.valid), self.i.ready.eq(q.w_rdy),
                     self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready), payload_out.eq(q.r_data),
                     self.level.eq(q.level)]
        return m


def stream_fifo(m: Module, name: str, layout, depth: int) -> StreamFifo:
    """A StreamFifo added to `m` as submodule `name`."""
    queue = StreamFifo(layout, depth)
    m.submodules[name] = queue
    return queue
