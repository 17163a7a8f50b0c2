"""The engine's four on-chip buffers (WGT, ACT, KV, OUT) and the ports that reach them.

Every buffer is a memory of `word_bytes`-wide words (`EngineGeometry.word_bytes`). Requesters
(the opcode sequencers, the DMA engines of the LOAD and STORE units, a test's backdoor) see the
buffers through *buffer ports* that name the buffer id with every access (docs/isa.md's buffer
ids), so one port reaches any buffer:

- read port: `buf`, `addr` (word address), `en`; `data` holds the word one cycle after `en`
  (a registered read, as a block RAM gives it);
- write port: `buf`, `addr`, `en` (one bit per byte of the word), `data`.

`EngineBuffers` gives every buffer one memory port per buffer port, so requesters never wait for
each other; an access to a buffer id that does not exist or past a buffer's end sets the sticky
`fault` (the emulator reports the same program error, sim/emulator.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from llmfab.compiler.isa import Buffer

BUFFER_ID_BITS = 4
BUFFERS = (Buffer.WGT, Buffer.ACT, Buffer.KV, Buffer.OUT)


@dataclass(frozen=True)
class BufferGeometry:
    """Word width and per-buffer word counts of the engine's buffers."""

    word_bytes: int
    words: dict  # Buffer -> number of words

    @classmethod
    def from_engine(cls, engine, word_bytes: int) -> "BufferGeometry":
        sizes = {Buffer.WGT: engine.weight_buffer_bytes, Buffer.ACT: engine.activation_buffer_bytes,
                 Buffer.KV: engine.kv_buffer_bytes, Buffer.OUT: engine.output_buffer_bytes}
        for buf, size in sizes.items():
            if size % word_bytes:
                raise ValueError(f"the {buf.name} buffer's {size} bytes are not a whole number of "
                                 f"{word_bytes}-byte words")
        return cls(word_bytes, {buf: size // word_bytes for buf, size in sizes.items()})

    @property
    def addr_width(self) -> int:
        """Bits of a word address into the largest buffer."""
        return max(1, (max(self.words.values()) - 1).bit_length())

    @property
    def data_width(self) -> int:
        return 8 * self.word_bytes


def read_port_signature(geometry: BufferGeometry) -> wiring.Signature:
    """A buffer read port, from the requester's side."""
    return wiring.Signature({"buf": Out(BUFFER_ID_BITS), "addr": Out(geometry.addr_width), "en": Out(1),
                             "data": In(geometry.data_width)})


def write_port_signature(geometry: BufferGeometry) -> wiring.Signature:
    """A buffer write port with byte enables, from the requester's side."""
    return wiring.Signature({"buf": Out(BUFFER_ID_BITS), "addr": Out(geometry.addr_width),
                             "en": Out(geometry.word_bytes), "data": Out(geometry.data_width)})


class EngineBuffers(wiring.Component):
    """The four buffers behind `reads` read ports and `writes` write ports (see the module docstring).

    Members: `read[i]`, `write[j]` (responder side of the port signatures), `fault` (sticky) and
    `clear_fault`.
    """

    def __init__(self, geometry: BufferGeometry, reads: int, writes: int):
        self.geometry = geometry
        super().__init__({
            "read": In(read_port_signature(geometry)).array(reads),
            "write": In(write_port_signature(geometry)).array(writes),
            "fault": Out(1), "clear_fault": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        faults = []
        selected = [Signal(BUFFER_ID_BITS, name=f"read{i}_buf") for i in range(len(self.read))]
        data = {buf: [] for buf in BUFFERS}
        for buf in BUFFERS:
            depth = g.words[buf]
            memory = Memory(shape=unsigned(g.data_width), depth=depth, init=[])
            m.submodules[f"{buf.name.lower()}_memory"] = memory
            for i, port in enumerate(self.read):
                rp = memory.read_port()
                m.d.comb += [rp.addr.eq(port.addr), rp.en.eq(port.en & (port.buf == buf))]
                data[buf].append(rp.data)
            for port in self.write:
                wp = memory.write_port(granularity=8)
                hit = port.buf == buf
                m.d.comb += [wp.addr.eq(port.addr), wp.data.eq(port.data), wp.en.eq(Mux(hit, port.en, 0))]
        known = lambda b: Cat(*(b == buf for buf in BUFFERS)).any()  # noqa: E731
        beyond = lambda b, addr: Cat(*((b == buf) & (addr >= g.words[buf]) for buf in BUFFERS)).any()  # noqa: E731
        for i, port in enumerate(self.read):
            with m.If(port.en):
                m.d.sync += selected[i].eq(port.buf)
            word = 0
            for buf in BUFFERS:
                word = Mux(selected[i] == buf, data[buf][i], word)
            m.d.comb += port.data.eq(word)
            faults.append(port.en & (~known(port.buf) | beyond(port.buf, port.addr)))
        for port in self.write:
            faults.append(port.en.any() & (~known(port.buf) | beyond(port.buf, port.addr)))
        with m.If(Cat(*faults).any()):
            m.d.sync += self.fault.eq(1)
        with m.Elif(self.clear_fault):
            m.d.sync += self.fault.eq(0)
        return m
