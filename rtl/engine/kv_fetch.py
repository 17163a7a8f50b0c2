"""Segments of the attention operands -> beats of dequantized, rotated ACT32 lanes.

ATTENTION reads a query head, every key head it attends to and every value head, from a stream
region of the KV buffer (docs/isa.md, KV stream region) in one of its forms: ACT32 values (an
ACT32 stream, a staged token, a query), or 4- or 8-bit codes with (scale, offset) per token or
per (block, channel). `KvFetch` takes one *segment* per head vector and gives beats of `lanes`
ACT32 values (`lanes` = the attention lanes A) that its consumer (requantize, score or value
unit) takes as they are:

- a segment names its form (`raw`, `bits8`, `stats` NONE / TOKEN / CHANNEL), where its channel 0
  lies (`buf`, `addr`; statistics at `stats_addr`), the beats `b0 … b1−1` to fetch, and with
  `pairs` a RoPE table row (`table`, in WGT: D/2 cos then D/2 sin, TRIG18 in int32);
- beat b holds channels `b·A … b·A+A−1` (`pairs` 0), or with `pairs` the RoPE pairs
  `b·A/2 … b·A/2+A/2−1`: channel i in lane i − b·A/2, its partner i + D/2 in lane i − b·A/2 + A/2,
  so RopeUnit rotates lane k with lane k + A/2. Lanes past the head's end repeat the part's first
  element (a maximum over the lanes is unchanged) and are cleared in `mask`;
- per-channel statistics are kept for one block: a segment with `fill` first loads those of its
  beats into a cache (a key's block changes every B keys);
- every beat then goes through `KvDequantizeUnit` (A lanes, `sat32(offset + scale·code)`; a raw
  value is its offset with scale 0) and `RopeUnit` (A/2 lanes; cos 1.0 and sin 0 without
  `pairs`, which is exact), with `last` (the segment's last beat), `final` (the segment's flag,
  on its last beat), `beat` and `phase` beside them.

Reads: codes or values of a beat part on `read0` (a GatherReader of 4A-byte spans), statistics
and table halves on `read1` (8A-byte spans), each one command; a span within one word is one
read. Per beat, `read0` serves one span (two with `pairs`) and `read1` none, or the segment's
per-token statistics on its first beat, its cache fill (one span per beat part) before it, and
with `pairs` a cos and a sin span. The beat leaves the assembler in the cycle its last span
arrives (the per-token statistics or the sin half are used as they arrive), so a beat of one
word span per cycle streams at one per cycle; the fetch adds 2 (dequantize) + 3 (rotate) cycles.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from llmfab.compiler.isa import Buffer
from llmfab.rtl.units.kv_quant import KvDequantizeUnit
from llmfab.rtl.units.rope import RopeUnit
from llmfab.sim.fixed_point import TRIG18

from .buffers import BufferGeometry, read_port_signature
from .bytestream import ADDR_BITS
from .kv_stream import GatherReader, layout_fifo
from .seq_support import side_channel

STATS_NONE, STATS_TOKEN, STATS_CHANNEL = 0, 1, 2
ONE = 1 << TRIG18.frac  # cos of a rotation by 0


def beat_bits(lanes: int, max_head_dim: int) -> int:
    """Bits of a beat index (0 … ceil(max_head_dim / lanes))."""
    return (-(-max_head_dim // lanes)).bit_length()


def segment_layout(lanes: int, max_head_dim: int) -> data.StructLayout:
    beats = unsigned(beat_bits(lanes, max_head_dim))
    return data.StructLayout({"phase": unsigned(2), "final": unsigned(1), "raw": unsigned(1), "bits8": unsigned(1),
                              "stats": unsigned(2), "fill": unsigned(1), "pairs": unsigned(1),
                              "buf": unsigned(4), "addr": unsigned(ADDR_BITS), "stats_addr": unsigned(ADDR_BITS),
                              "table": unsigned(ADDR_BITS), "b0": beats, "b1": beats})


def fetched_layout(lanes: int, max_head_dim: int) -> data.StructLayout:
    return data.StructLayout({"x": data.ArrayLayout(signed(32), lanes), "mask": unsigned(lanes), "last": unsigned(1),
                              "final": unsigned(1), "beat": unsigned(beat_bits(lanes, max_head_dim)),
                              "phase": unsigned(2)})


def _descriptor_layout(lanes: int, max_head_dim: int) -> data.StructLayout:
    beats = unsigned(beat_bits(lanes, max_head_dim))
    return data.StructLayout({"phase": unsigned(2), "final": unsigned(1), "raw": unsigned(1), "bits8": unsigned(1),
                              "stats": unsigned(2), "pairs": unsigned(1), "n": unsigned(lanes.bit_length()),
                              "fills": unsigned(beats.width + 1), "fill_base": beats, "tstat": unsigned(1),
                              "last": unsigned(1), "beat": beats})


class KvFetch(wiring.Component):
    """Segments in (`seg`), beats out (`o`); see the module docstring. `head_dim` (D, held for the
    instruction) places the beats; `read0`, `read1` are buffer read ports. The consumer counts
    the beats it takes (a segment's `final` flag marks the end of a sequence)."""

    def __init__(self, geometry: BufferGeometry, lanes: int, max_head_dim: int):
        if lanes < 4 or lanes & (lanes - 1):
            raise ValueError(f"attention lanes must be a power of two of at least 4, not {lanes}")
        self.geometry, self.lanes, self.max_head_dim = geometry, lanes, max_head_dim
        self.max_beats = -(-max_head_dim // lanes)
        super().__init__({"seg": In(stream.Signature(segment_layout(lanes, max_head_dim))),
                          "o": Out(stream.Signature(fetched_layout(lanes, max_head_dim))),
                          "head_dim": In(16),
                          "read0": Out(read_port_signature(geometry)), "read1": Out(read_port_signature(geometry))})

    def _part(self, b, p, pairs):
        """(first channel, channels) of part p of beat b."""
        a, half = self.lanes, self.lanes // 2
        d = self.head_dim
        single = b * a
        paired = b * half
        first = Mux(pairs, paired + Mux(p, d >> 1, 0), single)
        left = Mux(pairs, (d >> 1) - paired, d - single)
        width = Mux(pairs, half, a)
        return first, Mux(left < width, left, width)[:len(Const(a))]

    def elaborate(self, platform):
        m = Module()
        a, half = self.lanes, self.lanes // 2
        g = self.geometry
        seg_l, desc_l = segment_layout(a, self.max_head_dim), _descriptor_layout(a, self.max_head_dim)
        m.submodules.r0 = r0 = GatherReader(g, 4 * a)
        m.submodules.r1 = r1 = GatherReader(g, 8 * a)
        wiring.connect(m, r0.port, wiring.flipped(self.read0))
        wiring.connect(m, r1.port, wiring.flipped(self.read1))
        seg0, seg0_w, seg0_r = layout_fifo(m, "seg0", seg_l, 2)
        seg1, seg1_w, seg1_r = layout_fifo(m, "seg1", seg_l, 2)
        descs, desc_w, head = layout_fifo(m, "descs", desc_l, 4)
        m.d.comb += [self.seg.ready.eq(seg0.w_rdy & seg1.w_rdy), seg0.w_en.eq(self.seg.valid & self.seg.ready),
                     seg1.w_en.eq(self.seg.valid & self.seg.ready), seg0_w.eq(self.seg.payload),
                     seg1_w.eq(self.seg.payload)]

        def element_bytes(cur, channels):
            return Mux(cur.raw, channels << 2, Mux(cur.bits8, channels, channels >> 1))

        # ---------------------------------------------------------------- read0: one span per beat part
        cur0 = Signal(seg_l, name="seg_r0")
        busy0, b, p = Signal(name="busy_r0"), Signal.like(cur0.b0, name="beat_r0"), Signal(name="part_r0")
        first, count = self._part(b, p, cur0.pairs)
        last_part = p == cur0.pairs
        last_beat = b + 1 == cur0.b1
        finishing0 = Signal(name="finishing_r0")  # the segment's last span is taken: the next may load
        m.d.comb += seg0.r_en.eq(~busy0 | finishing0)
        cmd0 = r0.cmd.payload
        m.d.comb += [r0.cmd.valid.eq(busy0 & (~last_part | descs.w_rdy)), cmd0.buf.eq(cur0.buf),
                     cmd0.addr.eq(cur0.addr + element_bytes(cur0, first)), cmd0.nbytes.eq(element_bytes(cur0, count))]
        first_beat = b == cur0.b0
        m.d.comb += [desc_w.phase.eq(cur0.phase), desc_w.final.eq(cur0.final & last_beat), desc_w.raw.eq(cur0.raw),
                     desc_w.bits8.eq(cur0.bits8), desc_w.stats.eq(cur0.stats), desc_w.pairs.eq(cur0.pairs),
                     desc_w.n.eq(count),
                     desc_w.fills.eq(Mux(first_beat & cur0.fill, (cur0.b1 - cur0.b0) << cur0.pairs, 0)),
                     desc_w.fill_base.eq(cur0.b0), desc_w.tstat.eq(first_beat & (cur0.stats == STATS_TOKEN)),
                     desc_w.last.eq(last_beat), desc_w.beat.eq(b),
                     descs.w_en.eq(r0.cmd.valid & r0.cmd.ready & last_part)]
        m.d.comb += finishing0.eq(r0.cmd.valid & r0.cmd.ready & last_part & last_beat)
        with m.If(r0.cmd.valid & r0.cmd.ready):
            with m.If(last_part):
                m.d.sync += [p.eq(0), b.eq(b + 1)]
                with m.If(last_beat):
                    m.d.sync += busy0.eq(0)
            with m.Else():
                m.d.sync += p.eq(1)
        with m.If(seg0.r_en & seg0.r_rdy):  # (after the updates above, which it overrides)
            m.d.sync += [cur0.eq(seg0_r), busy0.eq(1), b.eq(seg0_r.b0), p.eq(0)]

        # ---------------------------------------------------------------- read1: fill, token statistics, table
        cur1 = Signal(seg_l, name="seg_r1")
        e, q, which = Signal.like(cur0.b0, name="beat_r1"), Signal(name="part_r1"), Signal(name="sin_r1")
        cmd1 = r1.cmd.payload
        fill_first, fill_count = self._part(e, q, cur1.pairs)
        pair_first, pair_count = self._part(e, 0, 1)
        # the readers' tags are unused; driven by a state bit each, so that no command bit is a
        # constant-only process (which Verilator refuses, ALWNEVER)
        m.d.comb += [cmd1.buf.eq(Buffer.KV), r1.cmd.valid.eq(0), cmd1.tag.eq(which), cmd0.tag.eq(p)]
        after_fill = Mux(cur1.stats == STATS_TOKEN, 1, Mux(cur1.pairs, 2, 0))  # 1 TSTAT, 2 ROPE, 0 done
        def load_next():
            """Take the next segment (if any) and go to its first item; a segment without any is
            dropped at once."""
            m.d.comb += seg1.r_en.eq(1)
            with m.If(seg1.r_rdy):
                m.d.sync += [cur1.eq(seg1_r), e.eq(seg1_r.b0), q.eq(0), which.eq(0)]
                with m.If(seg1_r.fill):
                    m.next = "FILL"
                with m.Elif(seg1_r.stats == STATS_TOKEN):
                    m.next = "TSTAT"
                with m.Elif(seg1_r.pairs):
                    m.next = "ROPE"
                with m.Else():
                    m.next = "IDLE"
            with m.Else():
                m.next = "IDLE"

        def then(code):
            with m.If(code == 1):
                m.next = "TSTAT"
            with m.Elif(code == 2):
                m.next = "ROPE"
            with m.Else():
                load_next()

        with m.FSM(name="read1"):
            with m.State("IDLE"):
                load_next()
            with m.State("FILL"):
                m.d.comb += [r1.cmd.valid.eq(1), cmd1.addr.eq(cur1.stats_addr + (fill_first << 3)),
                             cmd1.nbytes.eq(fill_count << 3)]
                with m.If(r1.cmd.ready):
                    with m.If(q == cur1.pairs):
                        m.d.sync += [q.eq(0), e.eq(e + 1)]
                        with m.If(e + 1 == cur1.b1):
                            m.d.sync += e.eq(cur1.b0)
                            then(after_fill)
                    with m.Else():
                        m.d.sync += q.eq(1)
            with m.State("TSTAT"):
                m.d.comb += [r1.cmd.valid.eq(1), cmd1.addr.eq(cur1.stats_addr), cmd1.nbytes.eq(8)]
                with m.If(r1.cmd.ready):
                    then(Mux(cur1.pairs, 2, 0))
            with m.State("ROPE"):
                m.d.comb += [r1.cmd.valid.eq(1), cmd1.buf.eq(Buffer.WGT),
                             cmd1.addr.eq(cur1.table + (pair_first << 2) + Mux(which, self.head_dim << 1, 0)),
                             cmd1.nbytes.eq(pair_count << 2)]
                with m.If(r1.cmd.ready):
                    m.d.sync += which.eq(~which)
                    with m.If(which):
                        m.d.sync += e.eq(e + 1)
                        with m.If(e + 1 == cur1.b1):
                            load_next()

        # ---------------------------------------------------------------- assembler
        m.submodules.dequant = dequant = KvDequantizeUnit(a, bits=8)
        m.submodules.rope = rope = RopeUnit(half)
        cache = Memory(shape=unsigned(64 * a), depth=self.max_beats, init=[])
        m.submodules.cache = cache
        cache_w = cache.write_port(granularity=64)
        cache_r = cache.read_port(domain="comb")
        i0, i1 = Signal(range(2), name="parts_taken"), Signal(range(2 * self.max_beats + 4), name="items_taken")
        part0 = Signal(32 * a, name="part0")
        cos = Signal(32 * half, name="cos")
        tscale, toffset = Signal(32, name="token_scale"), Signal(32, name="token_offset")
        rope_items = Mux(head.pairs, 2, 0)
        total1 = head.fills + head.tstat + rope_items
        live1 = head.tstat | head.pairs  # the last read1 span is used as it arrives
        latched1 = total1 - live1
        ready = Signal(name="beat_ready")
        m.d.comb += ready.eq(descs.r_rdy & (i0 == head.pairs) & r0.o.valid & (i1 == latched1)
                             & (~live1 | r1.o.valid))
        emit = Signal(name="emit")
        take0 = descs.r_rdy & r0.o.valid & (i0 < head.pairs)
        take1 = descs.r_rdy & r1.o.valid & (i1 < latched1)
        chunk0, chunk1 = r0.o.payload.data, r1.o.payload.data
        m.d.comb += [r0.o.ready.eq(take0 | emit), r1.o.ready.eq(take1 | (emit & live1)), descs.r_en.eq(emit)]
        with m.If(emit):
            m.d.sync += [i0.eq(0), i1.eq(0)]
        with m.Else():
            with m.If(take0):
                m.d.sync += [part0.eq(chunk0), i0.eq(1)]
            with m.If(take1):
                m.d.sync += i1.eq(i1 + 1)
        # read1 items in order: fills (entry fill_base + k >> pairs, part k & pairs), token statistics, cos
        filling = take1 & (i1 < head.fills)
        entry = head.fill_base + Mux(head.pairs, i1 >> 1, i1)
        upper = head.pairs & i1[0]
        m.d.comb += [cache_w.addr.eq(entry), cache_w.data.eq(Mux(upper, chunk1 << (64 * half), chunk1)),
                     cache_w.en.eq(Mux(filling, Mux(head.pairs, Mux(upper, ((1 << half) - 1) << half, (1 << half) - 1),
                                                    (1 << a) - 1), 0))]
        with m.If(emit & head.tstat & ~head.pairs):  # used as it arrived: kept for the segment's other beats
            m.d.sync += [tscale.eq(chunk1[:32]), toffset.eq(chunk1[32:64])]
        with m.If(take1 & ~filling):
            with m.If(head.tstat & (i1 == head.fills)):
                m.d.sync += [tscale.eq(chunk1[:32]), toffset.eq(chunk1[32:64])]
            with m.Else():
                m.d.sync += cos.eq(chunk1)
        m.d.comb += cache_r.addr.eq(head.beat)

        # the beat's lanes: element i of its part, or the part's element 0 past the head's end
        scale = Mux(head.tstat & ~head.pairs, chunk1[:32], tscale)
        offset = Mux(head.tstat & ~head.pairs, chunk1[32:64], toffset)
        inputs = dequant.i.payload
        mask = []
        lower_source = Signal(32 * a, name="lower_source")  # a Signal: every lane slices it
        m.d.comb += lower_source.eq(Mux(head.pairs, part0, chunk0))
        stats = cache_r.data
        for lane in range(a):
            upper_lane = lane >= half
            i_pairs = lane - half if upper_lane else lane
            i = Mux(head.pairs, i_pairs, lane)
            valid = i < head.n
            mask.append(valid)
            source = chunk0 if upper_lane else lower_source

            def element(bits_, k, src=source):
                return src[bits_ * k:bits_ * (k + 1)]

            own_raw = Mux(head.pairs, element(32, i_pairs), element(32, lane))
            own8 = Mux(head.pairs, element(8, i_pairs), element(8, lane))
            own4 = Mux(head.pairs, element(4, i_pairs), element(4, lane))
            raw = Mux(valid, own_raw, element(32, 0))
            code = Mux(head.bits8, Mux(valid, own8, element(8, 0)), Mux(valid, own4, element(4, 0)))
            # the lane's statistics, or those of its part's element 0 past the head's end
            base_stats = Mux(head.pairs, stats[64 * half:64 * half + 64], stats[:64]) if upper_lane else stats[:64]
            stats_lane = Mux(valid, stats[64 * lane:64 * lane + 64], base_stats)
            channel = head.stats == STATS_CHANNEL
            m.d.comb += [inputs.code[lane].eq(Mux(head.raw, 0, code)),
                         inputs.scale[lane].eq(Mux(head.raw, 0, Mux(channel, stats_lane[:32], scale))),
                         inputs.offset[lane].eq(Mux(head.raw, raw, Mux(channel, stats_lane[32:], offset)))]
        lane_mask = Cat(*mask)
        cos_lanes, sin_lanes = [], []
        for k in range(half):
            valid = k < head.n
            cos_lanes.append(Mux(head.pairs, Mux(valid, cos[32 * k:32 * k + 18], cos[:18]), ONE))
            sin_lanes.append(Mux(head.pairs, Mux(valid, chunk1[32 * k:32 * k + 18], chunk1[:18]), 0))
        side1_l = data.StructLayout({"cos": data.ArrayLayout(signed(TRIG18.bits), half),
                                     "sin": data.ArrayLayout(signed(TRIG18.bits), half), "mask": unsigned(a),
                                     "last": unsigned(1), "final": unsigned(1), "beat": head.beat.shape(),
                                     "phase": unsigned(2)})
        side1_in = Signal(side1_l, name="side1_in")
        m.d.comb += [side1_in.mask.eq(lane_mask), side1_in.last.eq(head.last), side1_in.final.eq(head.final),
                     side1_in.beat.eq(head.beat), side1_in.phase.eq(head.phase)]
        m.d.comb += [side1_in.cos[k].eq(cos_lanes[k]) for k in range(half)]
        m.d.comb += [side1_in.sin[k].eq(sin_lanes[k]) for k in range(half)]
        side1_out, room1 = side_channel(m, dequant, side1_in.as_value(), "dequant")
        side1 = data.View(side1_l, side1_out)
        m.d.comb += [dequant.i.valid.eq(ready & room1), emit.eq(dequant.i.valid & dequant.i.ready)]

        # ---------------------------------------------------------------- dequantized -> rotated -> out
        side2_l = data.StructLayout({"mask": unsigned(a), "last": unsigned(1), "final": unsigned(1),
                                     "beat": head.beat.shape(), "phase": unsigned(2)})
        side2_in = Signal(side2_l, name="side2_in")
        m.d.comb += [side2_in.mask.eq(side1.mask), side2_in.last.eq(side1.last), side2_in.final.eq(side1.final),
                     side2_in.beat.eq(side1.beat), side2_in.phase.eq(side1.phase)]
        side2_out, room2 = side_channel(m, rope, side2_in.as_value(), "rope")
        side2 = data.View(side2_l, side2_out)
        m.d.comb += [rope.i.valid.eq(dequant.o.valid & room2), dequant.o.ready.eq(rope.i.ready & room2)]
        for k in range(half):
            m.d.comb += [rope.i.payload.x1[k].eq(dequant.o.payload.x[k]), rope.i.payload.x2[k].eq(dequant.o.payload.x[k + half]),
                         rope.i.payload.cos[k].eq(side1.cos[k]), rope.i.payload.sin[k].eq(side1.sin[k])]
        out = self.o.payload
        m.d.comb += [self.o.valid.eq(rope.o.valid), rope.o.ready.eq(self.o.ready),
                     out.mask.eq(side2.mask), out.last.eq(side2.last), out.final.eq(side2.final),
                     out.beat.eq(side2.beat), out.phase.eq(side2.phase)]
        for k in range(half):
            m.d.comb += [out.x[k].eq(rope.o.payload.o1[k]), out.x[k + half].eq(rope.o.payload.o2[k])]
        return m
