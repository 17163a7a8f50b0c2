"""ROPE: rotate every head of ACT32 rows by its token's RoPE row (docs/isa.md; docs/numerics.md §8).

src0 holds ACT32 `[rows, cols]`, `cols / D` heads of depth D (`depth`) per row; src1 one RoPE row
per token, `int32 cos[D/2], int32 sin[D/2]` (TRIG18 values), row t at `src1 + 4·D·t`; dst gets
the rotated rows, exactly `sim/emulator_ops.rope` (numerics `apply_rope`: pairs `(i, i + D/2)`,
`o1 = sat32(rshr(x1·cos − x2·sin, 16))`, `o2 = sat32(rshr(x2·cos + x1·sin, 16))`). dst may be
src0 itself (the compiler rotates q and k in place) or apart from it.

Dataflow, per token: `read[0]` fetches the token's cos half and `read[1]` its sin half into two
small tables (L = `sfu_lanes` values per entry); then for every head `read[0]` streams the
head's first half (x1) and `read[1]` its second half (x2) in lock-step, L pairs per cycle, into
a `RopeUnit` of L lanes with cos/sin from the tables. The unit's o1 and o2 chunks go into two
FIFOs; the writer (one ByteWriter command for all of dst) takes a head's o1 half, then its o2
half, so dst receives each head in order while the unit runs ahead on the next heads and the
next token's table. Each half-head is read once, before any of that head is written, which is
what makes the rotation in place correct. The write port carries L outputs per cycle, so each
lane pair is busy at most every other cycle.

Cycles from `start` to `done`, with src0, src1 and dst word-aligned and a half head (`2·D`
bytes) a whole number of words; H = cols / D heads, P = D / (2L) chunks per half head,
I = (P + 1)(H + 1), O = 2PH (`cycles`, measured on 86 shapes at 8- and 32-byte words):

    rows · max(I, O) + H + P + 10 + min(2, max(0, O − I + 2))

I is the input side's time per token: each reader transfer (the table half, then one half of
each head) takes its P chunks plus one cycle in which the reader's packer closes it; O is the
write port's time per token, 2P chunks per head. The longer of the two sets the pace. H is the
shape check (it counts the heads, since `cols` must be a multiple of D); P + 10 are the first
token's table and the fixed latencies (check, command, port read, reader FIFO and packer, the
unit's 3 stages, the output FIFO, the writer's final word, done); the last term (0 … 2) is how
far the write port trails the input at the end. Unaligned operands can take a few cycles more.

`error` with `done` before any access: D = 0 or odd (the emulator rejects both even when
`rows = 0`), D > `max_depth` (the tables and the FIFO hold half of `max_depth`), `cols` not a
multiple of D (after the shape check), dst overlapping src0 without being equal to it, dst
overlapping the RoPE rows, a region past the 28-bit byte addresses or dst past a 24-bit
transfer. A cos/sin value outside TRIG18's 18 bits (docs/numerics.md §2) is found as the table
streams: `error` comes with `done` at the end (dst written). `rows = 0` or `cols = 0`
otherwise: done in the check cycle, nothing accessed.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import fifo
from amaranth.lib.memory import Memory

from llmfab.compiler.isa import Opcode
from llmfab.rtl.units.rope import RopeUnit
from llmfab.sim.fixed_point import TRIG18

from .bytestream import ADDR_BITS
from .geometry import ACT32_BYTES
from .seq_support import (
    LimitedSequencer,
    Region,
    act32_streams,
    beyond_addresses,
    control,
    lane_values,
    lanes_fit,
    overlaps,
    row_commands,
    row_tracker,
    same_region,
    side_channel,
    too_long,
)
from .sequencer import ROWS_BITS

DEFAULT_MAX_DEPTH = 256
FIXED_CYCLES = 10  # see the docstring's cycle formula
DEPTH_BITS = 16
QUEUE_SLACK = 4  # FIFO entries beyond two half heads: the input side's lead over the write port


def _commands(m: Module, cmd, go: Value, inst, rows, heads, offset, name: str) -> None:
    """One reader's commands: per token its table half, then one half of every head (all `2·D`
    bytes); `offset` picks the half (0: cos and x1, `2·D`: sin and x2)."""
    rows_left = Signal(ROWS_BITS, name=f"{name}_rows_left")
    heads_left = Signal(DEPTH_BITS, name=f"{name}_heads_left")
    table_next = Signal(name=f"{name}_table_next")
    table_addr = Signal(ADDR_BITS, name=f"{name}_table_addr")
    head_addr = Signal(ADDR_BITS, name=f"{name}_head_addr")
    step = inst.depth * ACT32_BYTES
    m.d.comb += [cmd.valid.eq(rows_left != 0), cmd.payload.nbytes.eq(inst.depth * 2),
                 cmd.payload.buf.eq(Mux(table_next, inst.src1_buf, inst.src0_buf)),
                 cmd.payload.addr.eq(Mux(table_next, table_addr, head_addr) + offset)]
    with m.If(go):
        m.d.sync += [rows_left.eq(rows), table_next.eq(1), table_addr.eq(inst.src1_addr), head_addr.eq(inst.src0_addr)]
    with m.Elif(cmd.valid & cmd.ready):
        with m.If(table_next):
            m.d.sync += [table_next.eq(0), heads_left.eq(heads), table_addr.eq(table_addr + step)]
        with m.Else():
            m.d.sync += [head_addr.eq(head_addr + step), heads_left.eq(heads_left - 1)]
            with m.If(heads_left == 1):
                m.d.sync += [table_next.eq(1), rows_left.eq(rows_left - 1)]


class RopeSequencer(LimitedSequencer):
    """Executes ROPE (see the module docstring); heads of up to `limit` (max_depth) elements."""

    OPCODES = (Opcode.ROPE,)
    DEFAULT_LIMIT = DEFAULT_MAX_DEPTH

    @classmethod
    def queue_depth(cls, lanes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> int:
        return 2 * -(-max_depth // (2 * lanes)) + QUEUE_SLACK

    @classmethod
    def cycles(cls, rows: int, cols: int, depth: int, lanes: int) -> int:
        """Cycles from start to done (see the docstring's conditions; rows > 0)."""
        heads, per_half = cols // depth, -(-depth // (2 * lanes))
        inputs, outputs = (per_half + 1) * (heads + 1), 2 * per_half * heads
        trail = min(2, max(0, outputs - inputs + 2))
        return rows * max(inputs, outputs) + heads + per_half + FIXED_CYCLES + trail

    def elaborate(self, platform):
        m = Module()
        lanes = self.geometry.sfu_lanes
        half_beats = -(-self.limit // (2 * lanes))
        x1r, x2r, dst = act32_streams(m, self, 2)
        m.submodules.unit = unit = RopeUnit(lanes)
        tables = []
        for name in ("cos", "sin"):
            memory = Memory(shape=unsigned(TRIG18.bits * lanes), depth=half_beats, init=[])
            m.submodules[f"{name}_table"] = memory
            tables.append((memory.write_port(), memory.read_port(domain="comb")))

        inst, rows, depth = self.inst, self.rows, self.inst.depth
        total = Signal(ROWS_BITS + 18)
        m.d.comb += total.eq(rows * inst.cols * ACT32_BYTES)
        src_region = Region(inst.src0_buf, inst.src0_addr, total)
        dst_region = Region(inst.dst_buf, inst.dst_addr, total)
        table_region = Region(inst.src1_buf, inst.src1_addr, rows * depth * ACT32_BYTES)
        rejected = (depth == 0) | depth[0]
        bad = ((depth > self.limit) | (overlaps(dst_region, src_region) & ~same_region(dst_region, src_region))
               | overlaps(dst_region, table_region) | beyond_addresses(src_region) | beyond_addresses(dst_region)
               | beyond_addresses(table_region) | too_long(total))

        # the shape check counts the heads: cols = heads · D
        heads = Signal(DEPTH_BITS)
        covered = Signal(DEPTH_BITS + 1)

        go = Signal()
        _commands(m, x1r.cmd, go, inst, rows, heads, 0, "x1")
        _commands(m, x2r.cmd, go, inst, rows, heads, depth * 2, "x2")
        row_commands(m, dst.cmd, go, inst.dst_buf, inst.dst_addr, 0, total, 1, "dst")

        # input side: a token's table, then its heads' halves in lock-step through the unit
        in_heads = Signal(DEPTH_BITS)
        beat = Signal(range(half_beats + 1))
        loading = Signal()
        got = [Signal(name="got_cos"), Signal(name="got_sin")]
        index = [Signal(range(half_beats + 1), name="cos_index"), Signal(range(half_beats + 1), name="sin_index")]
        table_bad = Signal()
        side, room = side_channel(m, unit, Cat(x1r.o.payload.count, x1r.o.payload.last), "beat")
        for (write, read), reader, have, at in zip(tables, (x1r, x2r), got, index):
            chunk = reader.o.payload
            take_table = loading & reader.o.valid & ~have
            values = lane_values(chunk.data, 32, lanes)
            in_range = lanes_fit(chunk, TRIG18.bits, lanes)
            m.d.comb += [write.addr.eq(at), write.data.eq(Cat(*(v[:TRIG18.bits] for v in values))),
                         write.en.eq(take_table), read.addr.eq(beat)]
            with m.If(take_table):
                m.d.sync += at.eq(Mux(chunk.last, 0, at + 1))
                with m.If(chunk.last):
                    m.d.sync += have.eq(1)
                with m.If(~in_range):
                    m.d.sync += table_bad.eq(1)
        done_loading = Cat(*(have | (loading & r.o.valid & r.o.payload.last) for have, r in zip(got, (x1r, x2r)))).all()
        with m.If(loading & done_loading):
            m.d.sync += [loading.eq(0), got[0].eq(0), got[1].eq(0)]

        take = Signal()
        payload = unit.i.payload
        for lane, (a, b) in enumerate(zip(lane_values(x1r.o.payload.data, 32, lanes),
                                          lane_values(x2r.o.payload.data, 32, lanes))):
            m.d.comb += [payload.x1[lane].eq(a), payload.x2[lane].eq(b),
                         payload.cos[lane].eq(tables[0][1].data[TRIG18.bits * lane:TRIG18.bits * (lane + 1)]),
                         payload.sin[lane].eq(tables[1][1].data[TRIG18.bits * lane:TRIG18.bits * (lane + 1)])]
        m.d.comb += [unit.i.valid.eq(~loading & x1r.o.valid & x2r.o.valid & room), take.eq(unit.i.valid & unit.i.ready)]
        m.d.comb += [x1r.o.ready.eq(Mux(loading, ~got[0], take)), x2r.o.ready.eq(Mux(loading, ~got[1], take))]
        with m.If(take):
            m.d.sync += beat.eq(Mux(x1r.o.payload.last, 0, beat + 1))
            with m.If(x1r.o.payload.last):
                m.d.sync += in_heads.eq(Mux(in_heads == heads - 1, 0, in_heads + 1))
                with m.If(in_heads == heads - 1):
                    m.d.sync += loading.eq(1)

        # output side: the unit's o1 and o2 chunks wait in two FIFOs; dst takes a head's o1 half,
        # then its o2 half, while the unit runs ahead on the next heads (and the next token's table)
        count_bits = len(x1r.o.payload.count)
        entry_bits = 32 * lanes + count_bits + 1
        count, half_last = side[:count_bits], side[count_bits]
        halves = []
        for name, field in (("first", "o1"), ("second", "o2")):
            queue = fifo.SyncFIFO(width=entry_bits, depth=self.queue_depth(lanes, self.limit))
            m.submodules[name] = queue
            lanes_data = Cat(*(unit.o.payload[field][k] for k in range(lanes)))
            m.d.comb += [queue.w_en.eq(unit.o.valid & unit.o.ready), queue.w_data.eq(Cat(lanes_data, count, half_last))]
            halves.append(queue)
        first, second = halves
        m.d.comb += unit.o.ready.eq(first.w_rdy & second.w_rdy)
        second_half = Signal()
        out_heads = Signal(DEPTH_BITS)
        entry = Mux(second_half, second.r_data, first.r_data)
        entry_count, entry_last = entry[32 * lanes:32 * lanes + count_bits], entry[-1]
        head_done = dst.i.valid & dst.i.ready & second_half & entry_last
        on_last_row, final_taken = row_tracker(m, go, head_done & (out_heads == heads - 1), rows)
        m.d.comb += [dst.i.valid.eq(Mux(second_half, second.r_rdy, first.r_rdy)),
                     dst.i.payload.data.eq(entry[:32 * lanes]), dst.i.payload.count.eq(entry_count),
                     dst.i.payload.last.eq(second_half & entry_last & (out_heads == heads - 1) & on_last_row),
                     first.r_en.eq(~second_half & dst.i.ready), second.r_en.eq(second_half & dst.i.ready)]
        with m.If(dst.i.valid & dst.i.ready & entry_last):
            m.d.sync += second_half.eq(~second_half)
        with m.If(head_done):
            m.d.sync += out_heads.eq(Mux(out_heads == heads - 1, 0, out_heads + 1))

        with m.If(go):
            m.d.sync += [loading.eq(1), got[0].eq(0), got[1].eq(0), index[0].eq(0), index[1].eq(0), beat.eq(0),
                         in_heads.eq(0), second_half.eq(0), out_heads.eq(0), table_bad.eq(0)]

        def enter(m):
            m.d.sync += [heads.eq(1), covered.eq(depth)]
            m.next = "SHAPE"

        def states(m, run, fail):
            with m.State("SHAPE"):
                with m.If(covered == inst.cols):
                    run()
                with m.Elif(covered > inst.cols):
                    fail()
                with m.Else():
                    m.d.sync += [heads.eq(heads + 1), covered.eq(covered + depth)]

        control(m, self, rejected=rejected, empty=(rows == 0) | (inst.cols == 0), bad=bad, go=go,
                finished=final_taken & dst.idle, late_error=table_bad, prepare=(enter, states))
        return m
