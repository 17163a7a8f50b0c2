"""Byte streams: moving byte ranges at any alignment between buffers, HBM beats and datapaths.

Every operand of the ISA is a byte range (docs/isa.md: byte addresses, row strides in bytes), but
memories deliver whole words. Three components turn one into the other:

- `Packer(in_bytes, out_bytes)` re-packs a stream of *chunks* (`data` with `count` valid bytes
  starting at byte `first`, `last` closing a transfer) into *packed* chunks of `out_bytes`: every
  one full except the transfer's last. It is the gearbox between any two widths.
- `WordReader` reads `nbytes` from byte address `addr` of a buffer through a read port and emits
  them packed, `out_bytes` per chunk, the first byte of the range in byte 0.
- `ByteWriter` takes a packed stream and writes it to `nbytes` from byte address `addr` of a
  buffer through a write port, with byte enables at both ends.

All three accept one chunk per cycle when the widths are equal (the Packer needs `in_bytes +
out_bytes` bytes of state for that); a transfer of `n` bytes from a reader takes
`ceil((addr % W + n) / W)` port reads, plus 2 cycles of latency (port, FIFO).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .buffers import BUFFER_ID_BITS, BufferGeometry, read_port_signature, write_port_signature

ADDR_BITS = 28  # byte addresses of the ISA's buffer fields
LENGTH_BITS = 24  # bytes of one transfer (row_bytes is 24 bits)


def chunk_layout(nbytes: int) -> data.StructLayout:
    """A chunk: `count` valid bytes of `data` from byte `first`; `last` ends the transfer."""
    return data.StructLayout({"data": unsigned(8 * nbytes), "first": unsigned(max(1, (nbytes - 1).bit_length())),
                              "count": unsigned(nbytes.bit_length()), "last": unsigned(1)})


def packed_layout(nbytes: int) -> data.StructLayout:
    """A packed chunk: `count` valid bytes from byte 0 (`nbytes` unless `last`)."""
    return data.StructLayout({"data": unsigned(8 * nbytes), "count": unsigned(nbytes.bit_length()),
                              "last": unsigned(1)})


# A byte range of a buffer: what a reader or writer command names.
RangeCommand = data.StructLayout({"buf": unsigned(BUFFER_ID_BITS), "addr": unsigned(ADDR_BITS),
                                  "nbytes": unsigned(LENGTH_BITS)})


def barrel_shift(m: Module, value, amount, width: int, left: bool = False):
    """`value >> amount` (or `<< amount`) in `width` bits as a logarithmic shifter: one 2:1 mux
    per bit and bit of `amount` (Amaranth's own variable shift ties every output bit to every
    input bit, which makes elaborating wide windows slow). Every stage is a Signal of `m`:
    Amaranth lowers an expression afresh wherever it is read, and each stage reads the one
    before twice, so stages as expressions cost 2^stages muxes (65,536 copies of a 34,824-bit
    mux for a 4,096-lane GEMV window: out of memory)."""
    current = value.as_unsigned()[:width] if len(value) >= width else Cat(value.as_unsigned(), Const(0, width - len(value)))
    shift = Signal(len(amount), name="shift_amount")
    m.d.comb += shift.eq(amount)
    for k in range(len(shift)):
        step = 1 << k
        stage = Signal(width, name=f"shift_stage{k}")
        if step >= width:
            m.d.comb += stage.eq(Mux(shift[k], 0, current))
        else:
            moved = Cat(Const(0, step), current[:width - step]) if left else Cat(current[step:], Const(0, step))
            m.d.comb += stage.eq(Mux(shift[k], moved, current))
        current = stage
    return current


def low_ones(m: Module, count, width: int):
    """The `width`-bit mask of the low `count` bits (all ones from `count >= width` on), as a
    logarithmic shifter of `width` bits: Amaranth's `1 << count` is `2^len(count)` bits wide,
    past its 65,536-bit limit once `count` has 16 bits (8 · a 4,096-byte chunk's count)."""
    return ~barrel_shift(m, Const((1 << width) - 1, width), count, width, left=True)


def byte_mask(m: Module, count, nbytes: int):
    """The `nbytes`-bit mask of the low `count` bytes (count in 0..nbytes)."""
    return low_ones(m, count, nbytes)


def low_bytes_bits(m: Module, count, nbytes: int):
    """The `8 · nbytes`-bit mask of the low `count` bytes (count in 0..nbytes), as one shift:
    a bit-per-byte mask expanded by slicing would be lowered by Amaranth once per bit read."""
    return low_ones(m, count * 8, 8 * nbytes)


class Packer(wiring.Component):
    """Chunks of up to `in_bytes` in, packed chunks of `out_bytes` out (see the module docstring).

    Input chunks must hold at least one byte; bytes outside `first .. first + count - 1` are
    ignored. A transfer's last output chunk carries `last`; the next transfer's first input is
    taken only after it left, so transfers never mix.
    """

    def __init__(self, in_bytes: int, out_bytes: int):
        self.in_bytes, self.out_bytes = in_bytes, out_bytes
        super().__init__({"i": In(stream.Signature(chunk_layout(in_bytes))),
                          "o": Out(stream.Signature(packed_layout(out_bytes))),
                          "empty": Out(1)})

    def elaborate(self, platform):
        m = Module()
        n_in, n_out = self.in_bytes, self.out_bytes
        capacity = n_in + n_out
        acc = Signal(8 * capacity)
        fill = Signal(range(capacity + 1))
        flushing = Signal()
        beat = self.i.payload

        pop = self.o.valid & self.o.ready
        out_count = Mux(fill < n_out, fill, n_out)
        after_pop = Signal.like(fill)
        m.d.comb += [
            self.o.valid.eq((fill >= n_out) | (flushing & (fill != 0))),
            self.o.payload.data.eq(acc[:8 * n_out]),
            self.o.payload.count.eq(out_count),
            self.o.payload.last.eq(flushing & (fill <= n_out)),
            after_pop.eq(fill - Mux(pop, out_count, 0)),
            self.i.ready.eq(~flushing & (after_pop <= n_out)),
        ]
        m.d.comb += self.empty.eq((fill == 0) & ~flushing)
        push = self.i.valid & self.i.ready
        incoming = Signal(8 * n_in)
        m.d.comb += incoming.eq((beat.data >> (beat.first * 8)) & low_bytes_bits(m, beat.count, n_in))
        kept = Signal(8 * capacity)
        m.d.comb += kept.eq(Mux(pop, acc >> (8 * n_out), acc))
        with m.If(push):
            m.d.sync += [acc.eq(kept | (incoming << (after_pop * 8))), fill.eq(after_pop + beat.count)]
        with m.Else():
            m.d.sync += [acc.eq(kept), fill.eq(after_pop)]
        with m.If(push & beat.last):
            m.d.sync += flushing.eq(1)
        with m.Elif(pop & self.o.payload.last):
            m.d.sync += flushing.eq(0)
        return m


class WordReader(wiring.Component):
    """Byte range of a buffer -> packed chunks of `out_bytes` (see the module docstring).

    Members: `cmd` (RangeCommand stream; a range of 0 bytes is taken and produces nothing),
    `o` (packed stream), `port` (a buffer read port), `idle` (no command in progress and no
    chunk left inside). With `shared`, the port is one of several behind an arbiter: `request`
    says the reader would read this cycle, and it reads only when `grant` is high.
    """

    FIFO_DEPTH = 4

    def __init__(self, geometry: BufferGeometry, out_bytes: int | None = None, shared: bool = False):
        self.geometry = geometry
        self.out_bytes = out_bytes or geometry.word_bytes
        self.shared = shared
        members = {"cmd": In(stream.Signature(RangeCommand)),
                   "o": Out(stream.Signature(packed_layout(self.out_bytes))),
                   "port": Out(read_port_signature(geometry)),
                   "idle": Out(1)}
        if shared:
            members.update({"request": Out(1), "grant": In(1)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        w = self.geometry.word_bytes
        shift = (w - 1).bit_length()
        chunk = chunk_layout(w)
        m.submodules.words = words = fifo.SyncFIFO(width=chunk.size, depth=self.FIFO_DEPTH)
        m.submodules.packer = packer = Packer(w, self.out_bytes)

        busy = Signal()
        buf = Signal(BUFFER_ID_BITS)
        word = Signal(ADDR_BITS)
        first = Signal(range(w))
        left = Signal(LENGTH_BITS)
        cmd = self.cmd.payload
        m.d.comb += self.cmd.ready.eq(~busy)
        with m.If(self.cmd.valid & ~busy & (cmd.nbytes != 0)):
            m.d.sync += [busy.eq(1), buf.eq(cmd.buf), word.eq(cmd.addr >> shift), first.eq(cmd.addr[:shift] if shift else 0),
                         left.eq(cmd.nbytes)]

        # issue one word read per cycle while the FIFO has room for everything in flight
        in_flight = Signal()
        room = words.level + in_flight < self.FIFO_DEPTH
        issue = busy & room
        if self.shared:
            m.d.comb += self.request.eq(issue)
            issue = issue & self.grant
        count = Signal(range(w + 1))
        m.d.comb += count.eq(Mux(left < w - first, left, w - first))
        m.d.comb += [self.port.buf.eq(buf), self.port.addr.eq(word), self.port.en.eq(issue)]
        meta_first, meta_count, meta_last = Signal.like(first), Signal.like(count), Signal()
        m.d.sync += in_flight.eq(issue)
        with m.If(issue):
            m.d.sync += [word.eq(word + 1), first.eq(0), left.eq(left - count),
                         meta_first.eq(first), meta_count.eq(count), meta_last.eq(left == count)]
            with m.If(left == count):
                m.d.sync += busy.eq(0)
        entry = Signal(chunk)
        m.d.comb += [entry.data.eq(self.port.data), entry.first.eq(meta_first), entry.count.eq(meta_count),
                     entry.last.eq(meta_last),
                     words.w_data.eq(entry.as_value()), words.w_en.eq(in_flight)]
        out_entry = Signal(chunk)
        m.d.comb += [out_entry.as_value().eq(words.r_data),
                     packer.i.payload.eq(out_entry), packer.i.valid.eq(words.r_rdy), words.r_en.eq(packer.i.ready)]
        wiring.connect(m, packer.o, wiring.flipped(self.o))
        m.d.comb += self.idle.eq(~busy & ~in_flight & ~words.r_rdy & packer.empty)
        return m


class ByteWriter(wiring.Component):
    """Packed chunks of `in_bytes` -> a byte range of a buffer (see the module docstring).

    Members: `cmd` (RangeCommand stream), `i` (packed stream: exactly `nbytes` bytes, the last
    chunk with `last`), `port` (a buffer write port), `idle` (no command in progress).
    """

    def __init__(self, geometry: BufferGeometry, in_bytes: int | None = None):
        self.geometry = geometry
        self.in_bytes = in_bytes or geometry.word_bytes
        super().__init__({"cmd": In(stream.Signature(RangeCommand)),
                          "i": In(stream.Signature(packed_layout(self.in_bytes))),
                          "port": Out(write_port_signature(geometry)),
                          "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry.word_bytes
        shift = (w - 1).bit_length()
        m.submodules.packer = packer = Packer(self.in_bytes, w)

        active = Signal()
        lead = Signal(range(w))  # bytes of the first word below the range (phantom bytes)
        lead_pending = Signal()
        first_word = Signal()
        buf = Signal(BUFFER_ID_BITS)
        word = Signal(ADDR_BITS)
        cmd = self.cmd.payload
        m.d.comb += [self.cmd.ready.eq(~active), self.idle.eq(~active)]
        with m.If(self.cmd.valid & ~active & (cmd.nbytes != 0)):
            offset = cmd.addr[:shift] if shift else 0
            m.d.sync += [active.eq(1), buf.eq(cmd.buf), word.eq(cmd.addr >> shift), lead.eq(offset),
                         lead_pending.eq(offset != 0), first_word.eq(1)]

        # phantom bytes first (so the range starts at its byte offset in the word), then the data
        with m.If(lead_pending):
            m.d.comb += [packer.i.valid.eq(1), packer.i.payload.count.eq(lead), packer.i.payload.first.eq(0)]
            with m.If(packer.i.ready):
                m.d.sync += lead_pending.eq(0)
        with m.Else():
            m.d.comb += [packer.i.valid.eq(active & self.i.valid), packer.i.payload.data.eq(self.i.payload.data),
                         packer.i.payload.count.eq(self.i.payload.count), packer.i.payload.last.eq(self.i.payload.last),
                         self.i.ready.eq(active & packer.i.ready)]

        out = packer.o.payload
        mask = Signal(w)
        m.d.comb += mask.eq(byte_mask(m, out.count, w) & Mux(first_word, ~byte_mask(m, lead, w), (1 << w) - 1))
        m.d.comb += [packer.o.ready.eq(1), self.port.buf.eq(buf), self.port.addr.eq(word),
                     self.port.data.eq(out.data), self.port.en.eq(Mux(packer.o.valid, mask, 0))]
        with m.If(packer.o.valid):
            m.d.sync += [word.eq(word + 1), first_word.eq(0)]
            with m.If(out.last):
                m.d.sync += active.eq(0)
        return m
