"""Addressed byte spans for the KV sequencers: one read command gives one chunk, one chunk one write.

The KV cache sequencers (KV_QUANT, ATTENTION) touch a buffer in many short pieces (one head of
one token, a block's statistics, a RoPE table half), each at its own byte address, so the long
range transfers of rtl/engine/bytestream.py would stop between pieces. Here every piece is one
command of at most `max_bytes` bytes, and commands follow each other without a gap:

- `GatherReader`: a stream of (buffer, byte address, bytes) commands in, a stream of chunks out,
  each with the span's first byte in byte 0. A span covering `k` words takes `k` port reads
  (`k = ceil((addr mod W + nbytes) / W)`), issued back to back across commands, so one-word
  spans come at one per cycle; the chunk leaves 2 cycles after the span's last read
  (port, FIFO).
- `ScatterWriter`: a stream of addressed chunks in, `k` word writes with byte enables out, one
  per cycle, back to back across chunks; a chunk is written 1 cycle after it is taken.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .buffers import BUFFER_ID_BITS, BufferGeometry, read_port_signature, write_port_signature
from .bytestream import ADDR_BITS, byte_mask, low_bytes_bits


def span_command(max_bytes: int, tag_bits: int = 1) -> data.StructLayout:
    """A read command: `nbytes` (1 .. max_bytes) from byte address `addr` of buffer `buf`; `tag`
    is the requester's, handed back with the chunk."""
    return data.StructLayout({"buf": unsigned(BUFFER_ID_BITS), "addr": unsigned(ADDR_BITS),
                              "nbytes": unsigned(max_bytes.bit_length()), "tag": unsigned(tag_bits)})


def span_chunk(max_bytes: int, tag_bits: int = 1) -> data.StructLayout:
    """A chunk read: `count` bytes of `data` from byte 0, with its command's `tag`."""
    return data.StructLayout({"data": unsigned(8 * max_bytes), "count": unsigned(max_bytes.bit_length()),
                              "tag": unsigned(tag_bits)})


def addressed_chunk(max_bytes: int) -> data.StructLayout:
    """A chunk to write: `count` (1 .. max_bytes) bytes of `data` from byte 0 to byte `addr` of `buf`."""
    return data.StructLayout({"buf": unsigned(BUFFER_ID_BITS), "addr": unsigned(ADDR_BITS),
                              "count": unsigned(max_bytes.bit_length()), "data": unsigned(8 * max_bytes)})


def span_words(word_bytes: int, max_bytes: int) -> int:
    """Most words a span of `max_bytes` covers at any alignment."""
    return -(-max_bytes // word_bytes) + 1


class GatherReader(wiring.Component):
    """Byte spans of a buffer -> chunks (see the module docstring).

    Members: `cmd` (span_command stream), `o` (span_chunk stream), `port` (a buffer read port),
    `idle` (nothing accepted is left inside).
    """

    DEPTH = 4

    def __init__(self, geometry: BufferGeometry, max_bytes: int, tag_bits: int = 1):
        self.geometry = geometry
        self.max_bytes = max_bytes
        self.tag_bits = tag_bits
        super().__init__({"cmd": In(stream.Signature(span_command(max_bytes, tag_bits))),
                          "o": Out(stream.Signature(span_chunk(max_bytes, tag_bits))),
                          "port": Out(read_port_signature(geometry)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry.word_bytes
        shift = (w - 1).bit_length()
        slots = span_words(w, self.max_bytes)
        chunk = span_chunk(self.max_bytes, self.tag_bits)
        m.submodules.chunks = chunks = fifo.SyncFIFO(width=chunk.size, depth=self.DEPTH)

        # issue: one word read per cycle, the next command taken with the current one's last read
        busy = Signal()
        buf = Signal(BUFFER_ID_BITS)
        word = Signal(ADDR_BITS)
        first = Signal(range(w))
        count = Signal(len(self.cmd.payload.nbytes))
        tag = Signal(self.tag_bits)
        left = Signal(range(slots + 1))
        index = Signal(range(slots))
        pending = Signal(range(self.DEPTH + 1))  # commands taken whose chunk is not in the FIFO yet
        cmd = self.cmd.payload
        last_issue = busy & (left == 1)
        take = Signal()
        push = Signal()
        m.d.comb += [self.cmd.ready.eq((~busy | last_issue) & (chunks.level + pending < self.DEPTH)),
                     take.eq(self.cmd.valid & self.cmd.ready)]
        m.d.comb += [self.port.buf.eq(buf), self.port.addr.eq(word + index), self.port.en.eq(busy)]
        with m.If(busy):
            m.d.sync += [index.eq(index + 1), left.eq(left - 1)]
            with m.If(last_issue):
                m.d.sync += busy.eq(0)
        with m.If(take):
            low = cmd.addr[:shift]
            m.d.sync += [busy.eq(1), buf.eq(cmd.buf), word.eq(cmd.addr >> shift), first.eq(low),
                         count.eq(cmd.nbytes), tag.eq(cmd.tag), index.eq(0), left.eq((low + cmd.nbytes + (w - 1)) >> shift)]
        m.d.sync += pending.eq(pending + take - push)

        # return: the word arrives the cycle after its read; the span's last word completes the chunk
        r_valid, r_last = Signal(), Signal()
        r_index = Signal.like(index)
        r_first, r_count, r_tag = Signal.like(first), Signal.like(count), Signal.like(tag)
        m.d.sync += [r_valid.eq(busy), r_last.eq(last_issue), r_index.eq(index), r_first.eq(first), r_count.eq(count),
                     r_tag.eq(tag)]
        raw = Signal(8 * w * slots)
        words = [Mux(r_index == k, self.port.data, raw[8 * w * k:8 * w * (k + 1)]) for k in range(slots)]
        with m.If(r_valid):
            m.d.sync += raw.eq(Cat(*words))
        out = Signal(chunk)
        m.d.comb += [out.data.eq((Cat(*words) >> (r_first * 8))[:8 * self.max_bytes]), out.count.eq(r_count), out.tag.eq(r_tag),
                     push.eq(r_valid & r_last), chunks.w_en.eq(push), chunks.w_data.eq(out.as_value())]
        m.d.comb += [self.o.valid.eq(chunks.r_rdy), self.o.payload.eq(chunks.r_data), chunks.r_en.eq(self.o.ready)]
        m.d.comb += self.idle.eq(~busy & (pending == 0) & ~chunks.r_rdy)
        return m


class ScatterWriter(wiring.Component):
    """Addressed chunks -> buffer writes (see the module docstring).

    Members: `i` (addressed_chunk stream), `port` (a buffer write port), `idle` (every chunk taken
    is written).
    """

    def __init__(self, geometry: BufferGeometry, max_bytes: int):
        self.geometry = geometry
        self.max_bytes = max_bytes
        super().__init__({"i": In(stream.Signature(addressed_chunk(max_bytes))),
                          "port": Out(write_port_signature(geometry)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry.word_bytes
        shift = (w - 1).bit_length()
        slots = span_words(w, self.max_bytes)
        busy = Signal()
        buf = Signal(BUFFER_ID_BITS)
        word = Signal(ADDR_BITS)
        left = Signal(range(slots + 1))
        index = Signal(range(slots))
        window = Signal(8 * w * slots)
        enables = Signal(w * slots)
        chunk = self.i.payload
        m.d.comb += [self.i.ready.eq(~busy | (left == 1)), self.idle.eq(~busy)]
        m.d.comb += [self.port.buf.eq(buf), self.port.addr.eq(word + index),
                     self.port.data.eq(window.word_select(index, 8 * w)),
                     self.port.en.eq(Mux(busy, enables.word_select(index, w), 0))]
        with m.If(busy):
            m.d.sync += [index.eq(index + 1), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += busy.eq(0)
        mask = byte_mask(m, chunk.count, self.max_bytes)  # outside the If: its shifter's stages are comb
        valid_bits = low_bytes_bits(m, chunk.count, self.max_bytes)
        with m.If(self.i.valid & self.i.ready):
            low = chunk.addr[:shift]
            m.d.sync += [busy.eq(1), buf.eq(chunk.buf), word.eq(chunk.addr >> shift), index.eq(0),
                         left.eq((low + chunk.count + (w - 1)) >> shift),
                         window.eq((chunk.data & valid_bits) << (low * 8)),
                         enables.eq(Cat(mask, Const(0, w * slots - self.max_bytes)) << low)]
        return m


def replicated_act32_lanes(payload: data.View, count, lanes: int) -> list:
    """The ACT32 elements of a chunk as `lanes` signed values; lanes past the chunk's `count`
    elements repeat element 0 (so a lane statistic such as a minimum or maximum is unchanged)."""
    out = []
    for lane in range(lanes):
        value = payload[32 * lane:32 * (lane + 1)].as_signed()
        out.append(value if lane == 0 else Mux(lane < count, value, payload[:32].as_signed()))
    return out


def code_lanes(payload: data.View, bits: Value, lanes: int) -> list:
    """`lanes` codes of a chunk: 4-bit codes two per byte, the even element in the low nibble
    (`bits` 4), or one byte each (`bits` 8); as 8-bit unsigned values."""
    return [Mux(bits == 8, payload[8 * lane:8 * (lane + 1)], payload[4 * lane:4 * (lane + 1)]) for lane in range(lanes)]


def pack_codes(codes: list, bits) -> Value:
    """Codes (lane 0 first) as bytes: two 4-bit codes per byte (even lane low) or one per byte."""
    four = Cat(*(code[:4] for code in codes))
    eight = Cat(*(code[:8] for code in codes))
    return Mux(bits == 8, eight, four)



def layout_fifo(m: Module, name: str, layout: data.StructLayout, depth: int):
    """A SyncFIFO of `layout` records as a submodule; returns (fifo, write view, read view)."""
    queue = fifo.SyncFIFO(width=layout.size, depth=depth)
    m.submodules[name] = queue
    written = Signal(layout, name=f"{name}_w")
    m.d.comb += queue.w_data.eq(written.as_value())
    return queue, written, data.View(layout, queue.r_data)
