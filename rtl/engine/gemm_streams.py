"""Streams of the GEMM sequencer: several readers on one buffer port, bit windows, single elements.

- `share_read_port` puts several requesters (shared `WordReader`s, `ElementReader`s) behind one
  buffer read port with a round-robin arbiter: a requester raises `request` when it would read
  and reads in the cycles it gets `grant`; the data of a read reaches every requester the cycle
  after, and only the one that read takes it.
- `BitWindow` turns a packed byte stream (one section of a weight tile) into a window on its
  next bits: the consumer sees the first `max_pop` bits and how many are held, and drops any
  number of them per cycle (a beat's codes, 2:4 patterns, zero points, ...).
- `ElementReader` reads one 8-byte-aligned int64 per request (accumulator entries) and
  `ElementWriter` writes one 4- or 8-byte value at any byte address, in one write, or two when it
  straddles a word boundary.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .buffers import BUFFER_ID_BITS, BufferGeometry, read_port_signature, write_port_signature
from .bytestream import ADDR_BITS, barrel_shift, low_bytes_bits, packed_layout

INT64_BYTES = 8


def share_read_port(m: Module, port, requesters: list, name: str, restart) -> None:
    """Drive the read port `port` (requester side) from `requesters`, each an object with `port`
    (a read port, requester side), `request` and `grant`. Round robin: the requester after the
    last one granted goes first; `restart` makes the first requester first again (so a phase of
    an instruction always starts in the same order)."""
    count = len(requesters)
    last = Signal(range(max(count, 2)), name=f"{name}_last_grant")
    requests = [r.request for r in requesters]
    grants = [Signal(name=f"{name}_grant{k}") for k in range(count)]
    for k in range(count):
        options = []
        for previous in range(count):
            order = [(previous + 1 + j) % count for j in range(count)]
            ahead = order[:order.index(k)]
            blocked = Cat(*(requests[j] for j in ahead)).any() if ahead else Const(0)
            options.append((last == previous) & ~blocked)
        m.d.comb += grants[k].eq(requests[k] & Cat(*options).any())
    buf, addr, en = 0, 0, 0
    for requester, grant in zip(requesters, grants):
        m.d.comb += [requester.grant.eq(grant), requester.port.data.eq(port.data)]
        buf, addr = Mux(grant, requester.port.buf, buf), Mux(grant, requester.port.addr, addr)
        en = en | (grant & requester.port.en)
    m.d.comb += [port.buf.eq(buf), port.addr.eq(addr), port.en.eq(en)]
    with m.If(restart):
        m.d.sync += last.eq(count - 1)
    for k, grant in enumerate(grants):
        with m.Elif(grant):
            m.d.sync += last.eq(k)


class BitWindow(wiring.Component):
    """A window on the next bits of a packed byte stream (see the module docstring).

    Members: `i` (packed chunks of `in_bytes`; `last` is ignored, sections follow each other),
    `data` (the next `max_pop` bits, the stream's next bit in bit 0; bits past `fill` are
    undefined), `fill` (bits held), `pop` (bits to drop this cycle, at most `fill`), `clear`
    (drop everything). A chunk is taken in a cycle that leaves room for it, so a consumer
    dropping `8 · in_bytes` bits per cycle gets a new chunk every cycle.
    """

    def __init__(self, in_bytes: int, max_pop: int):
        self.in_bytes, self.max_pop = in_bytes, max_pop
        self.capacity = max_pop + 8 * in_bytes
        super().__init__({"i": In(stream.Signature(packed_layout(in_bytes))), "data": Out(max_pop),
                          "fill": Out(range(self.capacity + 1)), "pop": In(range(max_pop + 1)), "clear": In(1)})

    def elaborate(self, platform):
        m = Module()
        bits = Signal(self.capacity)
        kept = Signal.like(self.fill)
        m.d.comb += [kept.eq(self.fill - self.pop), self.data.eq(bits[:self.max_pop]),
                     self.i.ready.eq(~self.clear & (kept <= self.max_pop))]
        chunk = self.i.payload
        # a Signal, not an expression: the shifter below reads it at every stage, and Amaranth
        # lowers an expression afresh at every read
        incoming = Signal(8 * self.in_bytes)
        m.d.comb += incoming.eq(chunk.data & low_bytes_bits(m, chunk.count, self.in_bytes))
        remaining = barrel_shift(m, bits, self.pop, self.capacity)
        placed = barrel_shift(m, incoming, kept, self.capacity, left=True)
        take = self.i.valid & self.i.ready
        with m.If(self.clear):
            m.d.sync += self.fill.eq(0)
        with m.Elif(take):
            m.d.sync += [bits.eq(remaining | placed),
                         self.fill.eq(kept + 8 * chunk.count)]
        with m.Else():
            m.d.sync += [bits.eq(remaining), self.fill.eq(kept)]
        return m


def element_layout() -> data.StructLayout:
    """A value for ElementWriter: `nbytes` 4 or 8 (`wide`) of `value` at byte `addr`."""
    return data.StructLayout({"addr": unsigned(ADDR_BITS), "value": unsigned(64), "wide": unsigned(1)})


class ElementReader(wiring.Component):
    """Reads the int64 at each 8-byte-aligned byte address of its `addr` stream (from buffer
    `buf`) and gives the values in order on `o`; a requester for `share_read_port`.

    Members: `buf`, `addr` (stream of byte addresses), `o` (stream of 64-bit values), `port`,
    `request`, `grant`, `idle`.
    """

    DEPTH = 4

    def __init__(self, geometry: BufferGeometry):
        if geometry.word_bytes < INT64_BYTES:
            raise ValueError("an int64 element must fit one buffer word")
        self.geometry = geometry
        super().__init__({"buf": In(BUFFER_ID_BITS), "addr": In(stream.Signature(ADDR_BITS)),
                          "o": Out(stream.Signature(64)), "port": Out(read_port_signature(geometry)),
                          "request": Out(1), "grant": In(1), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry.word_bytes
        shift = (w - 1).bit_length()
        m.submodules.values = values = fifo.SyncFIFO(width=64, depth=self.DEPTH)
        in_flight = Signal()
        offset = Signal(max(1, shift))
        room = values.level + in_flight < self.DEPTH
        m.d.comb += [self.request.eq(self.addr.valid & room), self.addr.ready.eq(self.grant),
                     self.port.buf.eq(self.buf), self.port.addr.eq(self.addr.payload >> shift),
                     self.port.en.eq(self.grant)]
        m.d.sync += in_flight.eq(self.grant)
        with m.If(self.grant):
            m.d.sync += offset.eq(self.addr.payload[:shift] if shift else 0)
        m.d.comb += [values.w_en.eq(in_flight), values.w_data.eq(barrel_shift(m, self.port.data, offset * 8, 64)),
                     self.o.valid.eq(values.r_rdy), self.o.payload.eq(values.r_data), values.r_en.eq(self.o.ready),
                     self.idle.eq(~self.addr.valid & ~in_flight & ~values.r_rdy)]
        return m


class ElementWriter(wiring.Component):
    """Writes each value of its `i` stream (element_layout) to buffer `buf` through `port`.

    Members: `buf`, `i`, `port` (a write port), `idle`.
    """

    def __init__(self, geometry: BufferGeometry):
        self.geometry = geometry
        super().__init__({"buf": In(BUFFER_ID_BITS), "i": In(stream.Signature(element_layout())),
                          "port": Out(write_port_signature(geometry)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry.word_bytes
        shift = (w - 1).bit_length()
        beat = self.i.payload
        offset = beat.addr[:shift] if shift else 0
        placed = Signal(16 * w)
        mask = Signal(2 * w)
        m.d.comb += [placed.eq(barrel_shift(m, beat.value, offset * 8, 16 * w, left=True)),
                     mask.eq(Mux(beat.wide, 0xFF, 0x0F) << offset)]
        second = Signal()  # the element's upper word is written this cycle
        word = beat.addr >> shift
        with m.If(second):
            m.d.comb += [self.port.addr.eq(word + 1), self.port.data.eq(placed[8 * w:]),
                         self.port.en.eq(mask[w:]), self.i.ready.eq(1)]
            m.d.sync += second.eq(0)
        with m.Else():
            straddles = mask[w:].any()
            m.d.comb += [self.port.addr.eq(word), self.port.data.eq(placed[:8 * w]),
                         self.port.en.eq(Mux(self.i.valid, mask[:w], 0)), self.i.ready.eq(~straddles)]
            with m.If(self.i.valid & straddles):
                m.d.sync += second.eq(1)
        m.d.comb += [self.port.buf.eq(self.buf), self.idle.eq(~self.i.valid & ~second)]
        return m
