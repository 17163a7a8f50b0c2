"""ATTENTION: softmax attention of T queries over the cached keys and values (docs/isa.md, §7).

Operands: `src0` rotated queries ACT32 `[T, H·D]` (`cols` = H·D, `depth` = D), the key stream
region at `src1_addr` and the value stream region at `stride` (both in the KV buffer, layouts of
compiler/kv_layout.KvStreamLayout with `imm` capacity, `sub` = KV heads, `aux` = B, key mode in
`mode` bits 0–1, value mode in bits 2–3, flag `KV8`), `dst` ACT32 `[T, H·D]`. Query t (stream
position P + t) of head h sees keys 0 … P+t of KV head h div (H/KV) — exactly
`llmfab.sim.numerics.attention` with `causal_visibility`, as the emulator's `attend`.

Per (query, head), in order (nothing of one head overlaps the next):

1. *query*: the head's D values through `KvFetch` (rtl/engine/kv_fetch.py) into
   `RequantizeUnit` (A lanes): int8 codes in a local table, the step `(Aq, Eq)`;
2. *scores*: every visible key head through `KvFetch` (dequantized per its form: ACT32, codes with
   per-token statistics, codes of a completed per-channel block or a staged ACT32 token) into
   `DotProductUnit.scores` (A lanes, beats of A channels against the query codes); the scores,
   `sfu_lanes` to a beat, into `SoftmaxUnit`, whose probabilities fill a local table;
3. *values*: for each slice of A channels, every visible value head's slice through `KvFetch` into
   A one-lane `DotProductUnit.weighted_values` (lane c accumulates `Σ_j p_j · v_jc` over the
   keys), which write the slice of the output row.

Flag `LAMBDA` (docs/numerics.md §13, sim/emulator_lambda.attend): both regions are
LambdaStreamLayout (registers S, W, C), `imm` is the WGT address of the TRIG18 RoPE rows of slot
positions 0 … S+W−1. Query i = P + t sees n = min(i+1, S+W) keys, walked in slot order by
`LambdaCursor`: the sinks 0 … min(i, S−1), then the window from S + max(0, i−S−W+1) (token
slots wrap at S+W+C, per-channel window blocks at their block slots and raw rows at Bw+C). Key
s is rotated by row s and the query by row min(i, S+W−1) (KvFetch `pairs`: beats of RoPE pairs,
so the query codes and the key beats are both in pair order); a per-channel key is read from
its block's codes once the block's last token is at most i, else from its raw ACT32 row. Λ
needs an even D (D a multiple of 4 with 4-bit keys: each half's codes start on a byte), W ≥ 1
and min(P+T, S+W) keys at most `max_keys`.

A is `attention_lanes` (a power of two, at least 4); `max_head_dim` sizes the query table, the
per-channel statistics cache and the value slices, `max_keys` the softmax row (P + T must not
exceed it).

Cycles from `start` to `done` (`cycles`), with n_t = P + t + 1 keys for query t, b = ceil(D/A)
beats per head, L = sfu_lanes, U = ceil(n_t / L) softmax beats, when every span is one word read
(see `cycles` for the condition): the setup program, then per (query, head)
`Q + n_t·b + K + SoftmaxUnit.row_cycles(U, L) + S + b·(n_t + V)` and a fixed tail; the constants
are in `cycles`, which the tests assert on aligned cases. A staged ACT32 key or value of a
per-channel stream costs what a code does (one read a beat); a per-channel stream adds its
statistics fills, m_t = ceil(min(n_t, F) / B) of them per walk (F = B·floor((P+T)/B) keys have
block codes), each of r = ceil(8A / word) reads a beat: the assembler takes a fill's chunks before
the beat (b for keys, 1 for values, whose walk is made b times, once per slice), and the phase's
first fill also waits for its reads, (r−1)·b for keys, r−1 for values; so does a later fill of a
walk of one-beat segments (values, keys with b = 1) more than FILL_AHEAD (6) segments after the
previous fill (the fetch reads ahead only the statistics of the segments pushed while the previous
fill stalled it; also across the end of a value slice), e.g. every block start with B > 6.
Under Λ (`lambda_cycles`) the setup program is longer (SETUP_LAMBDA_CYCLES), n_t = min(P+t+1, S+W),
and the RoPE pairs add one read per query beat and per key beat (b + n_t·b), per-token keys one
statistics read per key (n_t); per-channel fills come at the walk's complete sink blocks, its
first window key and its later complete window blocks; a key fill adds its 2b reads (one span per
RoPE half, ceil(4A / word) reads each) on the port the table halves keep busy, a value fill costs
as in the dense case.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import connect, flipped

from llmfab.compiler.isa import Buffer, Flag, KvMode, Opcode
from llmfab.rtl.units.arith import rom
from llmfab.rtl.units.attention import DotProductUnit, SoftmaxUnit
from llmfab.rtl.units.requantize import RequantizeUnit
from llmfab.sim.attention_ops import AttentionConstants
from llmfab.sim.fixed_point import PROB17

from .bytestream import ADDR_BITS
from .kv_fetch import STATS_CHANNEL, STATS_NONE, STATS_TOKEN, KvFetch
from .kv_setup import (WIDE, Divide, LambdaRegs, SerialDivider, Step, StreamRegs, ceil_shift, merged, setup_cycles,
                       setup_states)
from .kv_stream import ScatterWriter
from .seq_support import Region, beyond_addresses, overlaps, same_region
from .sequencer import Sequencer

KV = int(Buffer.KV)
PHASE_QUERY, PHASE_KEYS, PHASE_VALUES = 0, 1, 2
SETUP_LAMBDA_CYCLES = 436  # the dense program's first 37 cycles, both Λ layouts (124), both window starts (8 x 34, 2 steps), 1 step
SETUP_CYCLES = 146  # H = cols / D, H / KV (18 each), both streams' layouts (8 steps, 2 x 34), (P+T) / B (34), 2 steps
HEAD_CYCLES = 38  # per (query, head): the three phases' hand-overs (control, fetch pipeline, consumers' flags)
TAIL_CYCLES = 2  # the last write, done
FILL_AHEAD = 6  # segments a stalled fill has behind it in the fetch (7 held: 4 descriptors, read0's, 2 queued)


def _log2(n: int) -> int:
    return (n - 1).bit_length()


class StreamCursor:
    """Where key (or value) j of a dense stream is, stepping j = 0, 1, …: the segment fields of
    its head `kvh` (`head_*` offsets, set by the caller) as KvStreamLayout places it."""

    def __init__(self, m: Module, name: str, lay: StreamRegs, base, full_tokens, block, kv_heads, head_dim, kv8):
        self.m, self.lay, self.base, self.full, self.block = m, lay, base, full_tokens, block
        new = lambda field, width=WIDE: Signal(width, name=f"{name}_{field}")  # noqa: E731
        self.j, self.k = new("j", 32), new("in_block", 16)
        self.code_pos, self.stat_pos, self.block_pos, self.stage_pos = (new(f) for f in
                                                                        ("code_pos", "stat_pos", "block_pos", "stage_pos"))
        self.head_code, self.head_raw, self.head_stat = new("head_code", 24), new("head_raw", 24), new("head_stat", 24)
        self.head_chan = new("head_chan", 24)
        self.kv_heads, self.head_dim, self.kv8 = kv_heads, head_dim, kv8

    def reset(self) -> list:
        return [r.eq(0) for r in (self.j, self.k, self.code_pos, self.stat_pos, self.block_pos, self.stage_pos)]

    def reset_heads(self) -> list:
        return [r.eq(0) for r in (self.head_code, self.head_raw, self.head_stat, self.head_chan)]

    def next_head(self) -> list:
        lay, d = self.lay, self.head_dim
        return [self.head_code.eq(self.head_code + lay.head_bytes), self.head_raw.eq(self.head_raw + 4 * d),
                self.head_stat.eq(self.head_stat + 8), self.head_chan.eq(self.head_chan + 8 * d)]

    def step(self) -> list:
        lay, width = self.lay, self.kv_heads * self.head_dim
        end_block = self.k + 1 == self.block
        return [self.j.eq(self.j + 1), self.code_pos.eq(self.code_pos + lay.code_row),
                self.stat_pos.eq(self.stat_pos + 8 * self.kv_heads), self.k.eq(Mux(end_block, 0, self.k + 1)),
                self.block_pos.eq(Mux(end_block, self.block_pos + 8 * width, self.block_pos)),
                self.stage_pos.eq(Mux(self.j >= self.full, self.stage_pos + 4 * width, self.stage_pos))]

    def emit_step(self, key) -> None:
        self.m.d.sync += self.step()

    def segment(self, seg, key=None, query=None) -> list:
        """Assignments of the segment fields (form and addresses) of the current j."""
        lay = self.lay
        staged = lay.channel & (self.j >= self.full)
        coded = ~lay.act32 & ~staged
        return [seg.raw.eq(~coded), seg.bits8.eq(self.kv8), seg.buf.eq(KV),
                seg.stats.eq(Mux(lay.token, STATS_TOKEN, Mux(coded, STATS_CHANNEL, STATS_NONE))),
                seg.fill.eq(lay.channel & coded & ((self.j == 0) | (self.k == 0))),
                seg.addr.eq(self.base + Mux(lay.act32, self.code_pos + self.head_raw,
                                            Mux(staged, lay.staging_offset + self.stage_pos + self.head_raw,
                                                self.code_pos + self.head_code))),
                seg.stats_addr.eq(self.base + lay.stats_offset + Mux(lay.token, self.stat_pos + self.head_stat,
                                                                     self.block_pos + self.head_chan))]


class LambdaCursor(StreamCursor):
    """Where the keys (or values) of query i lie in a Λ stream region (LambdaRegs), stepping over
    the query's keys in slot order s = 0 … n−1: the sinks j = s (s < S), then the window from
    j = S + off, off = max(0, i − S − W + 1) (sim/kv_ring.slot_keys). The window's first key has its
    own registers (`start`), advanced by one token per query once the ring is full; a query's key
    walk loads them at s = S. Per-channel keys are read quantized once their block's last token
    is at most i (`BlockLayout.ready_at`), else from their raw row."""

    def __init__(self, m: Module, name: str, lay, base, sinks, kv_heads, head_dim, kv8):
        super().__init__(m, name, lay, base, 0, 1, kv_heads, head_dim, kv8)
        new = lambda field, width=WIDE: Signal(width, name=f"{name}_{field}")  # noqa: E731
        self.sinks = sinks
        # sink part (j < S): in-block index, j·code_row, j·4w, block·8w, the block's last token
        self.sk, self.s_code, self.s_raw, self.s_stat, self.s_end = (new(f) for f in
                                                                      ("sk", "s_code", "s_raw", "s_stat", "s_end"))
        names = ("tslot", "t_code", "t_stat", "wk", "wslot", "w_code", "w_stat", "wraw", "w_raw", "w_end")
        self.walk = {f: new(f) for f in names}  # window (and token slot) part of the key walk
        self.start = {f: new(f"{f}0") for f in names}  # the same at the query's first window key

    def _window_step(self, r: dict) -> list:
        """One token on in the window part (token slots wrap at S + W + C, blocks at window_slots,
        raw rows at raw_ring)."""
        lay, w = self.lay, self.kv_heads * self.head_dim
        wrap_t = r["tslot"] + 1 == lay.token_slots
        end_block = r["wk"] + 1 == lay.window_block
        wrap_slot = end_block & (r["wslot"] + 1 == lay.window_slots)
        wrap_raw = r["wraw"] + 1 == lay.raw_ring
        return [r["tslot"].eq(Mux(wrap_t, self.sinks, r["tslot"] + 1)),
                r["t_code"].eq(Mux(wrap_t, self.sinks * lay.code_row, r["t_code"] + lay.code_row)),
                r["t_stat"].eq(Mux(wrap_t, self.sinks * 8 * self.kv_heads, r["t_stat"] + 8 * self.kv_heads)),
                r["wk"].eq(Mux(end_block, 0, r["wk"] + 1)),
                r["wslot"].eq(Mux(end_block, Mux(wrap_slot, 0, r["wslot"] + 1), r["wslot"])),
                r["w_code"].eq(Mux(wrap_slot, 0, r["w_code"] + lay.code_row)),
                r["w_stat"].eq(Mux(end_block, Mux(wrap_slot, 0, r["w_stat"] + 8 * w), r["w_stat"])),
                r["wraw"].eq(Mux(wrap_raw, 0, r["wraw"] + 1)), r["w_raw"].eq(Mux(wrap_raw, 0, r["w_raw"] + 4 * w)),
                r["w_end"].eq(Mux(end_block, r["w_end"] + lay.window_block, r["w_end"]))]

    def next_query(self) -> list:
        return self._window_step(self.start)

    def reset(self) -> list:
        """The walk at s = 0: the first sink, or without sinks the window's first key."""
        lay, none = self.lay, self.sinks == 0
        return [*(self.walk[f].eq(self.start[f]) for f in self.walk if not f.startswith("t")),
                *(self.walk[f].eq(Mux(none, self.start[f], 0)) for f in ("tslot", "t_code", "t_stat")),
                self.sk.eq(0), self.s_code.eq(0), self.s_raw.eq(0), self.s_stat.eq(0),
                self.s_end.eq(lay.sink_block - 1)]

    def emit_step(self, key) -> None:
        """After key s = `key`: the window's first key (s + 1 = S), the next sink or the next window key."""
        lay, w, m = self.lay, self.kv_heads * self.head_dim, self.m
        end_block = self.sk + 1 == lay.sink_block
        with m.If(key + 1 == self.sinks):
            m.d.sync += [self.walk[f].eq(self.start[f]) for f in self.walk]
        with m.Elif(key < self.sinks):
            m.d.sync += [self.sk.eq(Mux(end_block, 0, self.sk + 1)), self.s_code.eq(self.s_code + lay.code_row),
                         self.s_raw.eq(self.s_raw + 4 * w),
                         self.s_stat.eq(Mux(end_block, self.s_stat + 8 * w, self.s_stat)),
                         self.s_end.eq(Mux(end_block, self.s_end + lay.sink_block, self.s_end)),
                         self.walk["tslot"].eq(self.walk["tslot"] + 1),
                         self.walk["t_code"].eq(self.walk["t_code"] + lay.code_row),
                         self.walk["t_stat"].eq(self.walk["t_stat"] + 8 * self.kv_heads)]
        with m.Else():
            m.d.sync += self._window_step(self.walk)

    def segment(self, seg, key, query) -> list:
        """Segment fields of key s = `key` of query i = `query`."""
        lay, r = self.lay, self.walk
        o = lay.offsets
        in_sinks = key < self.sinks
        sink_ready = (self.s_end < self.sinks) & (self.s_end <= query)
        window_ready = r["w_end"] <= query
        coded_channel = lay.channel & Mux(in_sinks, sink_ready, window_ready)
        raw = lay.act32 | (lay.channel & ~coded_channel)
        first_of_block = Mux(in_sinks, (key == 0) | (self.sk == 0), (key == self.sinks) | (r["wk"] == 0))
        token_addr = Mux(lay.act32, r["t_code"] + self.head_raw, r["t_code"] + self.head_code)
        channel_addr = Mux(in_sinks,
                           Mux(coded_channel, o["sink_codes"] + self.s_code + self.head_code,
                               o["sink_raw"] + self.s_raw + self.head_raw),
                           Mux(coded_channel, o["window_codes"] + r["w_code"] + self.head_code,
                               o["window_raw"] + r["w_raw"] + self.head_raw))
        return [seg.raw.eq(raw), seg.bits8.eq(self.kv8), seg.buf.eq(KV),
                seg.stats.eq(Mux(lay.token, STATS_TOKEN, Mux(coded_channel, STATS_CHANNEL, STATS_NONE))),
                seg.fill.eq(coded_channel & first_of_block),
                seg.addr.eq(self.base + Mux(lay.channel, channel_addr, token_addr)),
                seg.stats_addr.eq(self.base + Mux(lay.token, o["stats"] + r["t_stat"] + self.head_stat,
                                                  Mux(in_sinks, o["sink_stats"] + self.s_stat,
                                                      o["window_stats"] + r["w_stat"]) + self.head_chan))]


class AttentionSequencer(Sequencer):
    """Executes ATTENTION (module docstring)."""

    OPCODES = (Opcode.ATTENTION,)

    def __init__(self, geometry, attention_lanes: int = 8, max_head_dim: int = 128, max_keys: int = 1024):
        if geometry.sfu_lanes & (geometry.sfu_lanes - 1):
            raise ValueError("the softmax packs sfu_lanes scores per beat; sfu_lanes must be a power of two")
        self.lanes, self.max_head_dim, self.max_keys = attention_lanes, max_head_dim, max_keys
        self.max_beats = -(-max_head_dim // attention_lanes)
        super().__init__(geometry)

    # ---------------------------------------------------------------------------------------- timing
    @staticmethod
    def _head_cycles(geometry, lanes: int, n: int, beats: int) -> int:
        """One dense (query, head) over n keys: hand-overs, query, n key beats and n value beats, softmax."""
        sl = geometry.sfu_lanes
        return (HEAD_CYCLES + RequantizeUnit.row_cycles(beats, lanes) + DotProductUnit.latency(lanes)
                + 2 * n * beats + SoftmaxUnit.row_cycles(-(-n // sl), sl) - -(-n // sl))

    @staticmethod
    def _stats_reads(geometry, lanes: int, head_dim: int, per_channel: int) -> int:
        """Word reads of the per-channel statistics of a beat (`per_channel` 8 bytes a channel; 4 for
        one RoPE half of it): of the last, smallest beat, a full beat of A channels under the
        formula's condition."""
        last = head_dim - (-(-head_dim // lanes) - 1) * lanes
        return -(-per_channel * last // geometry.word_bytes)

    @staticmethod
    def _fill_cycles(runs: list[tuple[int, int, int]], n: int, passes: int, chunks: int, reads: int,
                     single: bool) -> int:
        """Cycles the per-channel statistics fills add to one walk of n segments, made `passes`
        times: fills at the positions of `runs` ((first, step, count) arithmetic runs, in order),
        each `chunks` cache chunks of `reads` word reads. The assembler takes a fill's chunks before
        the segment's first beat (`chunks` cycles); the phase's first fill also waits for its reads
        ((reads - 1)·chunks more), and so does, in a walk of one-beat segments (`single`), every fill
        more than FILL_AHEAD segments after the previous one (only the segments pushed while the
        previous fill stalled have their statistics read ahead)."""
        runs = [r for r in runs if r[2] > 0]
        if not runs:
            return 0
        fills = sum(count for _, _, count in runs)
        exposed = 1
        if single:
            far = lambda gap: int(gap > FILL_AHEAD)  # noqa: E731
            ends = [first + step * (count - 1) for first, step, count in runs]
            within = sum((count - 1) * far(step) for _, step, count in runs)
            between = sum(far(b[0] - end) for end, b in zip(ends, runs[1:]))
            exposed += passes * (within + between) + (passes - 1) * far(n - ends[-1] + runs[0][0])
        return chunks * (passes * fills + (reads - 1) * exposed)

    @classmethod
    def cycles(cls, geometry, lanes: int, tokens: int, position: int, heads: int, head_dim: int,
               key_mode: KvMode = KvMode.KV4_TOKEN, value_mode: KvMode = KvMode.KV4_TOKEN, block: int = 1) -> int:
        """Cycles from start to done of a dense ATTENTION whose spans are each one word read
        (module docstring); `key_mode`, `value_mode` the streams' KvMode, `block` (`aux`) the
        per-channel block B. A per-channel stream's keys j < F = B·floor((P+T)/B) are read from
        their block's codes (a statistics fill at each block start), the others from their staged
        ACT32 rows, which cost what codes cost."""
        key_mode, value_mode, block = KvMode(key_mode), KvMode(value_mode), max(block, 1)
        beats = -(-head_dim // lanes)
        reads = cls._stats_reads(geometry, lanes, head_dim, 8)
        full = (position + tokens) // block * block if KvMode.KV4_CHANNEL in (key_mode, value_mode) else 0
        per_head = 0
        for t in range(tokens):
            n = position + t + 1
            runs = [(0, block, -(-min(n, full) // block))]
            per_head += cls._head_cycles(geometry, lanes, n, beats)
            if key_mode is KvMode.KV4_CHANNEL:
                per_head += cls._fill_cycles(runs, n, 1, beats, reads, beats == 1)
            if value_mode is KvMode.KV4_CHANNEL:
                per_head += cls._fill_cycles(runs, n, beats, 1, reads, True)
        return SETUP_CYCLES + TAIL_CYCLES + heads * per_head

    @staticmethod
    def _lambda_fills(i: int, sinks: int, window: int, block: int) -> list[tuple[int, int, int]]:
        """Slots s of query i's key walk where a per-channel key is read from a block's codes and
        loads the block's statistics (LambdaCursor.segment): the completed sink blocks of
        Bs = min(B, S) tokens, the walk's first window key if its block is complete, then every
        later complete window block (Bw = min(B, W) tokens from stream index S)."""
        runs = []
        if sinks:
            bs = min(block, sinks)
            runs.append((0, bs, min(i + 1, sinks) // bs))
        if i >= sinks:
            bw = min(block, window)
            off = max(0, i - sinks - window + 1)  # the walk's first window key is stream index S + off
            ready = (i - sinks + 1) // bw * bw  # window keys S + u with u < ready are complete
            if off < ready:
                nxt = (off // bw + 1) * bw
                runs += [(sinks, 1, 1), (sinks + nxt - off, bw, max(0, ready - nxt) // bw)]
        return runs

    @classmethod
    def lambda_cycles(cls, geometry, lanes: int, tokens: int, position: int, heads: int, head_dim: int, sinks: int,
                      window: int, key_mode: KvMode = KvMode.KV4_TOKEN, value_mode: KvMode = KvMode.KV4_TOKEN,
                      block: int = 1) -> int:
        """Cycles from start to done of ATTENTION with flag LAMBDA, every span one word read (module
        docstring): query t sees n_t = min(P+t+1, S+W) keys; as the dense case per (query, head)
        plus the RoPE pairs' second span per query and key beat (b + n_t·b) and, for per-token keys,
        their statistics read before the table halves (n_t). `key_mode`, `value_mode` and `block` as
        in `cycles`; a per-channel key of a complete block loads the block's statistics, one span
        per RoPE half of each beat on the read port the table halves keep busy (2b·ceil(4A / word)
        cycles a fill)."""
        key_mode, value_mode = KvMode(key_mode), KvMode(value_mode)
        beats = -(-head_dim // lanes)
        reads = cls._stats_reads(geometry, lanes, head_dim, 8)
        half_reads = cls._stats_reads(geometry, lanes, head_dim, 4)
        block = max(block, 1)
        per_head = 0
        for t in range(tokens):
            i = position + t
            n = min(i + 1, sinks + window)
            per_head += (cls._head_cycles(geometry, lanes, n, beats) + beats + n * beats
                         + (n if key_mode is KvMode.KV4_TOKEN else 0))
            if KvMode.KV4_CHANNEL in (key_mode, value_mode):
                runs = cls._lambda_fills(i, sinks, window, block)
                if key_mode is KvMode.KV4_CHANNEL:
                    per_head += sum(count for _, _, count in runs) * 2 * beats * half_reads
                if value_mode is KvMode.KV4_CHANNEL:
                    per_head += cls._fill_cycles(runs, n, beats, 1, reads, True)
        return SETUP_LAMBDA_CYCLES + TAIL_CYCLES + heads * per_head

    @classmethod
    def wide_beat_cycles(cls, geometry, lanes: int, tokens: int, position: int, heads: int, head_dim: int,
                         key_mode: KvMode, value_mode: KvMode, block: int = 1, lambda_shape: tuple | None = None) -> int:
        """Cycles beyond `cycles` / `lambda_cycles` when an ACT32 beat (4 bytes for each of its
        min(A, D) channels) spans r > 1 buffer words, which their condition excludes: r − 1 more
        reads for each beat of the query (b per (query, head)) and of every raw ACT32 key or value
        the walks visit (an ACT32 stream's, or a per-channel stream's staged keys outside complete
        blocks). An estimate: on the whole-engine run (u280-rtl-tiny, 8-byte words, A = 4, D = 16,
        per-channel keys still raw) it gives 160 of the 169 cycles the RTL spends beyond `cycles`;
        the unit tests do not assert it. `lambda_shape` = (S, W) under flag LAMBDA."""
        reads = -(-4 * min(lanes, head_dim) // geometry.word_bytes)
        if reads <= 1:
            return 0
        beats, block = -(-head_dim // lanes), max(block, 1)
        complete = (position + tokens) // block * block

        def raw(mode: KvMode, i: int, n: int) -> int:
            if mode is KvMode.ACT32:
                return n
            if mode is not KvMode.KV4_CHANNEL:
                return 0
            if lambda_shape is None:
                return max(0, n - complete)
            sinks, window = lambda_shape
            seen_sinks = min(i + 1, sinks)
            raw_sinks = seen_sinks - seen_sinks // min(block, sinks) * min(block, sinks) if sinks else 0
            stream = max(0, i - sinks + 1)  # window keys so far
            bw = min(block, window)
            return raw_sinks + min(n - seen_sinks, stream - stream // bw * bw)

        visits = 0
        for t in range(tokens):
            i = position + t
            n = i + 1 if lambda_shape is None else min(i + 1, sum(lambda_shape))
            visits += 1 + raw(KvMode(key_mode), i, n) + raw(KvMode(value_mode), i, n)
        return heads * beats * (reads - 1) * visits

    # ---------------------------------------------------------------------------------------- hardware
    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        a, sl = self.lanes, g.sfu_lanes
        kv_bytes = g.buffers.words[Buffer.KV] * g.word_bytes
        inst, regs = self.inst, self.regs
        d, cols, kvh_count, block, cap = inst.depth, inst.cols, inst.sub, inst.aux, inst.imm
        p, t = regs.position, self.rows
        # Signals, not expressions: Amaranth lowers an expression again at every read (below: every lane)
        kv8, lam = Signal(name="kv8"), Signal(name="lam")
        m.d.comb += [kv8.eq((inst.flags & int(Flag.KV8)) != 0), lam.eq((inst.flags & int(Flag.LAMBDA)) != 0)]

        m.submodules.fetch = fetch = KvFetch(g.buffers, a, self.max_head_dim)
        m.submodules.writer = writer = ScatterWriter(g.buffers, 4 * a)
        m.submodules.divider = divider = SerialDivider(32, 24)
        connect(m, fetch.read0, flipped(self.read[0]))
        connect(m, fetch.read1, flipped(self.read[1]))
        connect(m, writer.port, flipped(self.write))
        m.d.comb += fetch.head_dim.eq(d)

        # ------------------------------------------------------------ setup
        heads, heads_rem = Signal(16, name="heads"), Signal(24, name="heads_rem")
        group, group_rem = Signal(16, name="group"), Signal(24, name="group_rem")
        width = Signal(32, name="width")
        keys = StreamRegs("keys", inst.mode[:2], kvh_count, width, d, block, cap, kv8)
        values = StreamRegs("values", inst.mode[2:4], kvh_count, width, d, block, cap, kv8)
        full_blocks, full_tokens, count = Signal(32, name="full_blocks"), Signal(WIDE, name="full_tokens"), \
            Signal(33, name="count")
        constants = [AttentionConstants.for_head_dim(k) if k else AttentionConstants(0, 0)
                     for k in range(self.max_head_dim + 1)]
        log2e_m, log2e_s = Signal(16, name="log2e_mantissa"), Signal(signed(8), name="log2e_shift")
        program = [
            Divide(heads, heads_rem, cols, d, 16),
            Divide(group, group_rem, heads, kvh_count, 16),
            Step((width, kvh_count * d), (count, p + t),
                 (log2e_m, rom([c.mantissa for c in constants], Mux(d > self.max_head_dim, 0, d))),
                 (log2e_s, rom([c.shift for c in constants], Mux(d > self.max_head_dim, 0, d)))),
            *merged(keys.steps_a, values.steps_a),
            keys.division, values.division,
            *merged(keys.steps_b, values.steps_b),
            Divide(full_blocks, None, count, block, 32),
            Step((full_tokens, full_blocks * block)),
        ]
        if setup_cycles(program) != SETUP_CYCLES:
            raise AssertionError("AttentionSequencer: the setup program changed length; update SETUP_CYCLES")

        # Λ (flag LAMBDA): both regions as LambdaStreamLayout, the first query's window start in each
        sinks, window, chunk = regs.sinks, regs.window, regs.chunk
        ring_slots = sinks + window  # S + W: the keys of a query once the ring is full
        lkeys = LambdaRegs("lkeys", inst.mode[:2], kvh_count, width, d, block, sinks, window, chunk, kv8)
        lvalues = LambdaRegs("lvalues", inst.mode[2:4], kvh_count, width, d, block, sinks, window, chunk, kv8)
        lkc = LambdaCursor(m, "lkc", lkeys, inst.src1_addr, sinks, kvh_count, d, kv8)
        lvc = LambdaCursor(m, "lvc", lvalues, inst.stride, sinks, kvh_count, d, kv8)
        off0 = Mux(p + 1 > ring_slots, p + 1 - ring_slots, 0)  # window keys the first query no longer sees
        qtable = Signal(ADDR_BITS, name="query_table")
        one = lambda v: Mux(v == 0, 1, v)  # noqa: E731 - a divisor unused when zero (a token stream's block)

        def window_start(cursor, lay, name):
            r, kb0, tm, index = cursor.start, Signal(32, name=f"{name}_kb0"), Signal(24, name=f"{name}_tm"), \
                Signal(WIDE, name=f"{name}_index")
            return [
                [Divide(kb0, r["wk"], off0, one(lay.window_block), 32)],
                [Divide(None, r["wslot"], kb0, one(lay.window_slots), 32)],
                [Divide(None, r["wraw"], off0, one(lay.raw_ring), 32)],
                [Divide(None, tm, off0, window + chunk, 32)],
                [Step((r["tslot"], sinks + tm), (index, r["wslot"] * lay.window_block + r["wk"]),
                      (r["w_stat"], r["wslot"] * 8 * width), (r["w_raw"], r["wraw"] * 4 * width),
                      (r["w_end"], sinks + (kb0 + 1) * lay.window_block - 1))],
                [Step((r["w_code"], index * lay.code_row), (r["t_code"], r["tslot"] * lay.code_row),
                      (r["t_stat"], r["tslot"] * 8 * kvh_count))],
            ]

        key_start, value_start = window_start(lkc, lkeys, "lkc"), window_start(lvc, lvalues, "lvc")
        lambda_program = [
            *program[:3],
            *merged(lkeys.program, lvalues.program),
        ]
        for key_part, value_part in zip(key_start, value_start):
            lambda_program += merged(key_part, value_part)
        lambda_program.append(Step((qtable, inst.imm + Mux(p < ring_slots, p, ring_slots - 1) * 4 * d)))
        if setup_cycles(lambda_program) != SETUP_LAMBDA_CYCLES:
            raise AssertionError("AttentionSequencer: the Λ setup program changed length; update SETUP_LAMBDA_CYCLES")

        beats = ceil_shift(d, _log2(a))
        q_row, out_row = Signal(WIDE, name="q_row"), Signal(WIDE, name="out_row")
        queries = Region(inst.src0_buf, inst.src0_addr, t * 4 * cols)
        output = Region(inst.dst_buf, inst.dst_addr, t * 4 * cols)
        four_bit = (~keys.act32 | ~values.act32) & ~kv8
        channel = keys.channel | values.channel
        error = Signal(name="operand_error")
        key_end, value_end = Mux(lam, lkeys.end, keys.end), Mux(lam, lvalues.end, values.end)
        key_region, value_region = Region(KV, inst.src1_addr, key_end), Region(KV, inst.stride, value_end)
        most_keys = Mux(count < ring_slots, count, ring_slots)
        dense_error = ((channel & ((keys.channel & (keys.cap_rem != 0)) | (values.channel & (values.cap_rem != 0))))
                       | (count > cap) | (count > self.max_keys))
        lambda_error = ((window == 0) | (most_keys > self.max_keys) | d[0] | (~keys.act32 & ~kv8 & d[1]))
        m.d.comb += error.eq(
            Mux(lam, lambda_error, dense_error)
            | (inst.mode[:2] > int(KvMode.KV4_CHANNEL)) | (inst.mode[2:4] > int(KvMode.KV4_CHANNEL))
            | (d == 0) | (heads_rem != 0) | (kvh_count == 0) | (group_rem != 0) | (d > self.max_head_dim)
            | (four_bit & d[0]) | (channel & (block == 0)) | (inst.src1_buf != KV)
            | (inst.src1_addr + key_end > kv_bytes) | (inst.stride + value_end > kv_bytes)
            | beyond_addresses(queries) | beyond_addresses(output)
            | (overlaps(output, queries) & ~same_region(output, queries))
            | overlaps(output, key_region) | overlaps(output, value_region))

        # ------------------------------------------------------------ consumers' state
        q_done, soft_done, v_done = Signal(name="q_done"), Signal(name="soft_done"), Signal(name="v_done")
        q_scale, q_exp = Signal(16, name="q_scale_mantissa"), Signal(signed(6), name="q_scale_exponent")
        out_base = Signal(ADDR_BITS, name="out_base")
        nkeys = Signal(33, name="nkeys")

        # ------------------------------------------------------------ control
        seg = fetch.seg.payload
        tq, h, r = Signal(32, name="query"), Signal(16, name="head"), Signal(16, name="in_group")
        s, vpass = Signal(33, name="key"), Signal(16, name="value_pass")
        kc = StreamCursor(m, "kc", keys, inst.src1_addr, full_tokens, block, kvh_count, d, kv8)
        vc = StreamCursor(m, "vc", values, inst.stride, full_tokens, block, kvh_count, d, kv8)
        head_q = Signal(WIDE, name="head_q")
        ktable = Signal(ADDR_BITS, name="key_table")
        query = p + tq  # stream index of the query

        def cursor_segment(dense, lam_cursor):
            with m.If(lam):
                m.d.comb += lam_cursor.segment(seg, s, query)
            with m.Else():
                m.d.comb += dense.segment(seg)

        def cursor_step(dense, lam_cursor):
            with m.If(lam):
                lam_cursor.emit_step(s)
            with m.Else():
                dense.emit_step(s)
        m.d.comb += [seg.b0.eq(0), seg.b1.eq(beats), seg.bits8.eq(kv8)]
        with m.FSM(name="control"):
            with m.State("IDLE"):
                with m.If(self.start & lam):
                    m.next = "LSETUP_0"
                with m.Elif(self.start):
                    m.next = "SETUP_0"
            setup_states(m, "SETUP", program, divider, "CHECK")
            setup_states(m, "LSETUP", lambda_program, divider, "CHECK")
            with m.State("CHECK"):
                m.d.sync += [tq.eq(0), h.eq(0), r.eq(0), q_row.eq(inst.src0_addr), out_row.eq(inst.dst_addr),
                             head_q.eq(0), nkeys.eq(Mux(lam & (p + 1 > ring_slots), ring_slots, p + 1)),
                             *kc.reset_heads(), *vc.reset_heads(), *lkc.reset_heads(), *lvc.reset_heads()]
                with m.If(error):
                    m.d.comb += [self.done.eq(1), self.error.eq(1)]
                    m.next = "IDLE"
                with m.Elif(t == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "QUERY"
            with m.State("QUERY"):
                m.d.comb += [fetch.seg.valid.eq(1), seg.phase.eq(PHASE_QUERY), seg.final.eq(1), seg.raw.eq(1),
                             seg.stats.eq(STATS_NONE), seg.fill.eq(0), seg.pairs.eq(lam), seg.table.eq(qtable),
                             seg.buf.eq(inst.src0_buf), seg.addr.eq(q_row + head_q)]
                with m.If(fetch.seg.ready):
                    m.d.sync += [q_done.eq(0), out_base.eq(out_row + head_q), *kc.reset(), *lkc.reset()]
                    m.next = "QUERY_WAIT"
            with m.State("QUERY_WAIT"):
                with m.If(q_done):
                    m.d.sync += [s.eq(0), soft_done.eq(0), ktable.eq(inst.imm)]
                    m.next = "KEYS"
            with m.State("KEYS"):
                m.d.comb += [fetch.seg.valid.eq(1), seg.phase.eq(PHASE_KEYS), seg.final.eq(s + 1 == nkeys),
                             seg.pairs.eq(lam), seg.table.eq(ktable)]
                cursor_segment(kc, lkc)
                with m.If(fetch.seg.ready):
                    m.d.sync += [s.eq(s + 1), ktable.eq(ktable + 4 * d)]
                    cursor_step(kc, lkc)
                    with m.If(s + 1 == nkeys):
                        m.next = "SOFTMAX_WAIT"
            with m.State("SOFTMAX_WAIT"):
                with m.If(soft_done):
                    m.d.sync += [s.eq(0), vpass.eq(0), v_done.eq(0), *vc.reset(), *lvc.reset()]
                    m.next = "VALUES"
            with m.State("VALUES"):
                m.d.comb += [fetch.seg.valid.eq(1), seg.phase.eq(PHASE_VALUES), seg.final.eq(s + 1 == nkeys),
                             seg.pairs.eq(0), seg.b0.eq(vpass), seg.b1.eq(vpass + 1)]
                cursor_segment(vc, lvc)
                with m.If(fetch.seg.ready):
                    m.d.sync += s.eq(s + 1)
                    cursor_step(vc, lvc)
                    with m.If(s + 1 == nkeys):
                        m.d.sync += [s.eq(0), vpass.eq(vpass + 1), *vc.reset(), *lvc.reset()]
                        with m.If(vpass + 1 == beats):
                            m.next = "VALUES_WAIT"
            with m.State("VALUES_WAIT"):
                with m.If(v_done):
                    m.next = "QUERY"
                    with m.If(h + 1 == heads):
                        m.d.sync += [h.eq(0), r.eq(0), head_q.eq(0), tq.eq(tq + 1), q_row.eq(q_row + 4 * cols),
                                     out_row.eq(out_row + 4 * cols), nkeys.eq(Mux(lam & (nkeys == ring_slots), nkeys,
                                                                                  nkeys + 1)),
                                     *kc.reset_heads(), *vc.reset_heads(), *lkc.reset_heads(), *lvc.reset_heads()]
                        with m.If(query + 1 < ring_slots):  # the query's own slot: S + W − 1 once the ring is full
                            m.d.sync += qtable.eq(qtable + 4 * d)
                        with m.Else():  # the next query's window starts one token later
                            m.d.sync += [*lkc.next_query(), *lvc.next_query()]
                        with m.If(tq + 1 == t):
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += [h.eq(h + 1), head_q.eq(head_q + 4 * d), r.eq(Mux(r + 1 == group, 0, r + 1))]
                        with m.If(r + 1 == group):
                            m.d.sync += [*kc.next_head(), *vc.next_head(), *lkc.next_head(), *lvc.next_head()]
            with m.State("DRAIN"):
                with m.If(writer.idle):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

        # ------------------------------------------------------------ consumers of the fetched beats
        beat = fetch.o.payload
        phase = beat.phase
        requant = RequantizeUnit(a, self.max_beats)
        scores = DotProductUnit.scores(a)
        softmax = SoftmaxUnit(sl, -(-self.max_keys // sl))
        weighted = [DotProductUnit.weighted_values(1) for _ in range(a)]
        m.submodules.requant, m.submodules.scores, m.submodules.softmax = requant, scores, softmax
        for k, unit in enumerate(weighted):
            m.submodules[f"weighted{k}"] = unit
        q_codes = Memory(shape=unsigned(8 * a), depth=self.max_beats, init=[])
        probs = Memory(shape=unsigned(PROB17.bits * sl), depth=-(-self.max_keys // sl), init=[])
        m.submodules.q_codes, m.submodules.probs = q_codes, probs
        q_write, q_read = q_codes.write_port(), q_codes.read_port(domain="comb")
        p_write, p_read = probs.write_port(), probs.read_port(domain="comb")

        # query -> requantize -> codes (lanes past the head cleared)
        m.d.comb += [requant.i.valid.eq(fetch.o.valid & (phase == PHASE_QUERY)), requant.i.payload.last.eq(beat.last)]
        m.d.comb += [requant.i.payload.x[k].eq(beat.x[k]) for k in range(a)]
        q_beat = Signal(range(self.max_beats + 1), name="q_beat")
        # lanes past the head: channel b·A + k (dense), or with RoPE pairs (Λ) pair b·A/2 + k mod A/2
        lane_ok = Signal(a, name="lane_ok")  # a Signal: each lane reads one bit of it
        m.d.comb += lane_ok.eq(Cat(*(Mux(lam, (q_beat << _log2(a // 2)) + (k % (a // 2)) < (d >> 1),
                                         (q_beat << _log2(a)) + k < d) for k in range(a))))
        m.d.comb += [requant.o.ready.eq(1), q_write.addr.eq(q_beat), q_write.en.eq(requant.o.valid),
                     q_write.data.eq(Cat(*(Mux(lane_ok[k], requant.o.payload.q[k], 0) for k in range(a))))]
        with m.If(requant.o.valid):
            m.d.sync += q_beat.eq(Mux(requant.o.payload.last, 0, q_beat + 1))
            with m.If(requant.o.payload.last):
                m.d.sync += [q_scale.eq(requant.o.payload.scale_mantissa), q_exp.eq(requant.o.payload.scale_exponent),
                             q_done.eq(1)]

        # keys -> scores (query codes of the beat) -> softmax, L scores a beat
        finals = _flag_fifo(m, "score_final", depth=DotProductUnit.latency(a) + 3)
        m.d.comb += q_read.addr.eq(beat.beat)
        m.d.comb += [scores.i.valid.eq(fetch.o.valid & (phase == PHASE_KEYS) & finals.w_rdy),
                     scores.i.payload.last.eq(beat.last)]
        m.d.comb += [scores.i.payload.a[k].eq(q_read.data[8 * k:8 * k + 8].as_signed()) for k in range(a)]
        m.d.comb += [scores.i.payload.b[k].eq(beat.x[k]) for k in range(a)]
        m.d.comb += [finals.w_en.eq(scores.i.valid & scores.i.ready & beat.last), finals.w_data.eq(beat.final)]
        packed = Signal(data.ArrayLayout(signed(48), sl), name="packed_scores")
        filled = Signal(range(sl + 1), name="packed_count")
        pending, packed_last = Signal(name="packed_pending"), Signal(name="packed_last")
        sm_in = softmax.i.payload
        m.d.comb += [softmax.i.valid.eq(pending), sm_in.act_mantissa.eq(q_scale), sm_in.act_exponent.eq(q_exp),
                     sm_in.last.eq(packed_last), softmax.log2e_mantissa.eq(log2e_m), softmax.log2e_shift.eq(log2e_s)]
        m.d.comb += [sm_in.score[k].eq(packed[k]) for k in range(sl)]
        m.d.comb += [sm_in.visible[k].eq(k < filled) for k in range(sl)]
        sent = softmax.i.valid & softmax.i.ready
        accept = scores.o.valid & (~pending | sent)  # a score may start the next beat as the last one leaves
        slot = Mux(sent, 0, filled)
        m.d.comb += [scores.o.ready.eq(~pending | sent), finals.r_en.eq(accept)]
        with m.If(sent):
            m.d.sync += [pending.eq(0), filled.eq(0)]
        with m.If(accept):
            with m.Switch(slot):
                for k in range(sl):
                    with m.Case(k):
                        m.d.sync += packed[k].eq(scores.o.payload.y)
            m.d.sync += filled.eq(slot + 1)
            with m.If(finals.r_data | (slot + 1 == sl)):
                m.d.sync += [pending.eq(1), packed_last.eq(finals.r_data)]
        p_beat = Signal(range(-(-self.max_keys // sl) + 1), name="p_beat")
        m.d.comb += [softmax.o.ready.eq(1), p_write.addr.eq(p_beat), p_write.en.eq(softmax.o.valid),
                     p_write.data.eq(Cat(*(softmax.o.payload.p[k] for k in range(sl))))]
        with m.If(softmax.o.valid):
            m.d.sync += p_beat.eq(Mux(softmax.o.payload.last, 0, p_beat + 1))
            with m.If(softmax.o.payload.last):
                m.d.sync += soft_done.eq(1)

        # values -> A accumulating lanes -> the output slice
        vkey = Signal(33, name="value_key")
        m.d.comb += p_read.addr.eq(vkey >> _log2(sl))
        prob = p_read.data.word_select(vkey[:_log2(sl)] if sl > 1 else 0, PROB17.bits)
        all_ready = Cat(*(u.i.ready for u in weighted)).all()
        take_v = fetch.o.valid & (phase == PHASE_VALUES) & all_ready
        for k, unit in enumerate(weighted):
            m.d.comb += [unit.i.valid.eq(take_v), unit.i.payload.a[0].eq(prob), unit.i.payload.b[0].eq(beat.x[k]),
                         unit.i.payload.last.eq(beat.final)]
        with m.If(take_v):
            m.d.sync += vkey.eq(Mux(beat.final, 0, vkey + 1))
        m.d.comb += fetch.o.ready.eq(Mux(phase == PHASE_QUERY, requant.i.ready,
                                         Mux(phase == PHASE_KEYS, scores.i.ready & finals.w_rdy, all_ready)))
        out_valid = Cat(*(u.o.valid for u in weighted)).all()
        out_pass = Signal(16, name="out_pass")
        left = d - (out_pass << _log2(a))
        out = writer.i.payload
        m.d.comb += [writer.i.valid.eq(out_valid), out.buf.eq(inst.dst_buf),
                     out.addr.eq(out_base + (out_pass << _log2(4 * a))),
                     out.count.eq(Mux(left < a, left, a) << 2),
                     out.data.eq(Cat(*(u.o.payload.y for u in weighted)))]
        for unit in weighted:
            m.d.comb += unit.o.ready.eq(out_valid & writer.i.ready)
        with m.If(out_valid & writer.i.ready):
            m.d.sync += out_pass.eq(out_pass + 1)
            with m.If(out_pass + 1 == beats):
                m.d.sync += [out_pass.eq(0), v_done.eq(1)]
        return m


def _flag_fifo(m: Module, name: str, depth: int):
    """A one-bit SyncFIFO (a flag beside a unit's rows)."""
    queue = fifo.SyncFIFO(width=1, depth=depth)
    m.submodules[name] = queue
    return queue
