"""KV_QUANT: append the T new keys or values of a run to a KV cache stream region (docs/isa.md).

`src0` holds ACT32 `[T, KV·D]` (`cols` = KV·D, `depth` = D); the region at `dst_addr` of the KV
buffer has the layout of compiler/kv_layout.KvStreamLayout (`imm` capacity, `aux` block B, flag
`KV8` for 8-bit codes). Positions P … P+T−1 are written exactly as the emulator's
`StreamView.append` writes them:

- mode ACT32: the rows are copied to slots P … P+T−1;
- mode KV4_TOKEN: every (token, head) group of D values is quantized (rtl/units/kv_quant
  `KvQuantizeUnit`, `sfu_lanes` lanes, one group after the other) to codes at its slot and
  (scale, offset) at its statistics row;
- mode KV4_CHANNEL: the `P mod B` staged tokens and the new ones are cut into blocks; every
  block that completes is quantized per (head, channel) over its B tokens by `sfu_lanes`
  one-lane `KvQuantizeUnit`s side by side (one channel each, the tokens streamed as beats), and
  the tokens of the unfinished block are copied to the staging area.

With flag `LAMBDA` the region is a Λ cache (compiler/kv_layout.LambdaStreamLayout, registers S, W,
C), written as `sim/emulator_lambda.LambdaView.store`: ACT32 and per-token streams put token j in
slot j (a sink) or S + (j − S) mod (W + C); per-channel streams first copy every token's ACT32 row
to its raw row (sink j, or window row (j − S) mod (Bw + C)), then quantize each sink block
(Bs = min(B, S) tokens) and window block (Bw = min(B, W), block k in slot k mod window_slots,
rows wrapping around the raw ring) the run completes.

Structure: a control FSM runs a setup program (rtl/engine/kv_setup.py: the layout's section
offsets, `KV = cols / D`, `P divmod B`) and then emits *jobs*; an issuer turns a job into read
commands of a GatherReader on `read[0]` (one beat of up to `sfu_lanes` elements each); beats go
to the quantize units (or straight through, for copies); a write FSM turns the units' codes and
statistics into chunks of a ScatterWriter on `write`. `read[1]` is not used.

Cycles from `start` to `done` (`cycles`), with L = sfu_lanes, W the word bytes, C = max(W, 4L)
the copy chunk, w = KV·D, `rc(b, lanes)` = `KvQuantizeUnit.row_cycles` = 2b + 17 + tree_stages(lanes)
and `copy(n)` = ceil(4·n·w / C), when every beat is one word read (src0 and `dst_addr` multiples of
W, 4w a multiple of W, and per token 4D too):

- ACT32: `24 + copy(T) + 9`;
- KV4_TOKEN: `24 + T·KV·rc(ceil(D/L), L) + 9 + ceil(8/W)` (groups back to back, the last
  statistics write at the end);
- KV4_CHANNEL, with `full, rest = divmod(P mod B + T, B)` and G = ceil(w/L) channel groups, the
  last of n = w − (G−1)·L channels: `127 + copy(T) + 9` if no block completes, else
  `127 + full·G·rc(B, 1) + 9 + ceil(8n/W) + (copy(rest) + 7 if rest else 2)`.

Λ: ACT32 `123 + T·copy(1) + (T − 1) + 9` (a job per token), KV4_TOKEN
`123 + T·KV·rc(ceil(D/L), L) + 9 + ceil(8/W)`, KV4_CHANNEL `326 + T·copy(1) + (T − 1) + 9 + 2`
without a completed block, else `326 + T·copy(1) + (T − 1) + G·(sb·rc(Bs, 1) + wb·rc(Bw, 1)) + 16 +
ceil(8n/W) + [sb = 0]` for sb sink and wb window blocks (setup: 87 for the layout, 36 for the first
token's slot, 239 for the block ranges).

24 is the setup program (`cols / D`, 18 cycles, and 6 steps of section offsets), 127 adds the
three 32-bit divisions of the per-channel mode (34 cycles each) and a step; 9 = start, check, job
push, issuer, reader (port, FIFO), writer (register, write) and done; the staging copy follows a
barrier (the blocks are written first): 2 cycles, or 7 with a copy. Spans that cross a word
boundary take a second read or write each. The quantize units take one group at a time (no
overlap of a group's constants with the next group's beats), so a group costs `rc` rather than
its 2b beats.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data
from amaranth.lib.wiring import connect, flipped

from llmfab.compiler.isa import Buffer, Flag, KvMode, Opcode
from llmfab.rtl.units.kv_quant import KvQuantizeUnit

from .bytestream import ADDR_BITS
from .kv_setup import (WIDE, Divide, LambdaRegs, SerialDivider, Step, StreamRegs, ceil_shift, setup_cycles,
                       setup_states)
from .kv_stream import GatherReader, ScatterWriter, layout_fifo, replicated_act32_lanes
from .seq_support import Region, beyond_addresses, overlaps
from .sequencer import Sequencer

COPY, TOKEN, CHANNEL = 0, 1, 2  # job kinds
SETUP_COMMON = 24  # cols / D (16-bit division, 18 cycles) and 6 steps of layout arithmetic
SETUP_CHANNEL = 103  # capacity / B, P divmod B, (P mod B + T) divmod B (34 cycles each) and 1 step
FIXED_CYCLES = 9  # start, check, job, issuer, reader (port, FIFO), writer (register, write), done
BARRIER_CYCLES = 2  # blocks written -> staging copy state -> done, when no token is left to stage
STAGING_COPY_CYCLES = 7  # after the barrier: job, issuer, reader 2, writer 2, done
SETUP_LAMBDA = 87  # cols / D (18), 1 step, the Λ layout (three 17-bit divisions, 10 steps), 1 step
SETUP_LAMBDA_TOKENS = 36  # the first token's slot (P - S) mod (W + C) (34) and 2 steps
SETUP_LAMBDA_BLOCKS = 239  # raw row, sink and window block ranges, window slot, first block's raw row (7 x 34), 1 step
LAMBDA_BLOCK_CYCLES = 16  # check, raw copies' barrier, block jobs' hand-over and done (+1 without a sink block)
LAMBDA_NO_BLOCK_CYCLES = 2  # barrier, window check
KV = int(Buffer.KV)


def _log2(n: int) -> int:
    return (n - 1).bit_length()


class KvQuantSequencer(Sequencer):
    """Executes KV_QUANT (module docstring). `max_head_dim` sizes the per-token row buffer,
    `max_block` the per-channel one; `code_bits` the code widths built (flag KV8 picks 8)."""

    OPCODES = (Opcode.KV_QUANT,)

    def __init__(self, geometry, max_head_dim: int = 128, max_block: int = 64, code_bits: tuple = (4, 8)):
        self.max_head_dim, self.max_block = max_head_dim, max_block
        self.code_bits = tuple(code_bits)
        lanes = geometry.sfu_lanes
        self.copy_bytes = max(geometry.word_bytes, 4 * lanes)
        self.read_bytes = self.copy_bytes
        self.write_bytes = max(8 * lanes, self.copy_bytes)
        super().__init__(geometry)

    # ---------------------------------------------------------------------------------------- layouts
    def _job_layout(self):
        nb = unsigned(self.read_bytes.bit_length())
        return data.StructLayout({"kind": unsigned(2), "buf_a": unsigned(4), "addr_a": unsigned(ADDR_BITS),
                                  "count_a": unsigned(24), "buf_b": unsigned(4), "addr_b": unsigned(ADDR_BITS),
                                  "count_b": unsigned(24), "stride": unsigned(24), "nbytes": nb, "last_nbytes": nb})

    @staticmethod
    def _write_layout():
        return data.StructLayout({"kind": unsigned(2), "waddr": unsigned(ADDR_BITS), "wstep": unsigned(24),
                                  "n": unsigned(16), "saddr": unsigned(ADDR_BITS)})

    # ---------------------------------------------------------------------------------------- timing
    @classmethod
    def cycles(cls, geometry, mode: KvMode, tokens: int, position: int, kv_heads: int, head_dim: int,
               block: int = 1, lambda_shape: tuple | None = None) -> int:
        """Cycles from start to done with aligned operands (module docstring); `lambda_shape` =
        (S, W, C) for flag LAMBDA."""
        lanes, word = geometry.sfu_lanes, geometry.word_bytes
        width = kv_heads * head_dim
        copy = lambda n: -(-4 * n * width // max(word, 4 * lanes))  # noqa: E731 - beats of a copy of n tokens
        groups = -(-width // lanes)
        last_stats = -(-8 * (width - (groups - 1) * lanes) // word)  # words of the last statistics write
        group_row = lambda b: groups * KvQuantizeUnit.row_cycles(b, 1)  # noqa: E731
        mode = KvMode(mode)
        if mode is KvMode.KV4_TOKEN:
            setup = SETUP_COMMON if lambda_shape is None else SETUP_LAMBDA + SETUP_LAMBDA_TOKENS
            row = KvQuantizeUnit.row_cycles(-(-head_dim // lanes), lanes)
            return setup + tokens * kv_heads * row + FIXED_CYCLES + -(-8 // word)
        if lambda_shape is not None:
            sinks, window, _ = lambda_shape
            copies = tokens * copy(1) + tokens - 1  # one job per token
            if mode is KvMode.ACT32:
                return SETUP_LAMBDA + SETUP_LAMBDA_TOKENS + copies + FIXED_CYCLES
            bs, bw = (min(block, sinks) if sinks else 0), min(block, window)
            sink_blocks = (min(position + tokens, sinks) // bs - min(position, sinks) // bs) if sinks else 0
            window_blocks = max(position + tokens - sinks, 0) // bw - max(position - sinks, 0) // bw
            setup = SETUP_LAMBDA + SETUP_LAMBDA_BLOCKS + copies
            if not sink_blocks + window_blocks:
                return setup + FIXED_CYCLES + LAMBDA_NO_BLOCK_CYCLES
            blocks = sink_blocks * group_row(bs) + window_blocks * group_row(bw)
            return setup + blocks + LAMBDA_BLOCK_CYCLES + last_stats + (sink_blocks == 0)
        if mode is KvMode.ACT32:
            return SETUP_COMMON + copy(tokens) + FIXED_CYCLES
        setup = SETUP_COMMON + SETUP_CHANNEL
        full, rest = divmod(position % block + tokens, block)
        if full == 0:
            return setup + copy(tokens) + FIXED_CYCLES
        blocks = full * group_row(block) + FIXED_CYCLES + last_stats
        return setup + blocks + (copy(rest) + STAGING_COPY_CYCLES if rest else BARRIER_CYCLES)

    # ---------------------------------------------------------------------------------------- hardware
    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        lanes = g.sfu_lanes
        kv_bytes = g.buffers.words[Buffer.KV] * g.word_bytes
        inst, regs = self.inst, self.regs

        m.submodules.reader = reader = GatherReader(g.buffers, self.read_bytes, tag_bits=3)
        m.submodules.writer = writer = ScatterWriter(g.buffers, self.write_bytes)
        m.submodules.divider = divider = SerialDivider(32, 24)
        connect(m, reader.port, flipped(self.read[0]))
        connect(m, writer.port, flipped(self.write))

        token_units = {b: KvQuantizeUnit(lanes, -(-self.max_head_dim // lanes), b) for b in self.code_bits}
        channel_units = {b: [KvQuantizeUnit(1, self.max_block, b) for _ in range(lanes)] for b in self.code_bits}
        for b in self.code_bits:
            m.submodules[f"token{b}"] = token_units[b]
            for lane, unit in enumerate(channel_units[b]):
                m.submodules[f"channel{b}_{lane}"] = unit

        # ------------------------------------------------------------ instruction fields and setup values
        mode = inst.mode
        kv8 = (inst.flags & int(Flag.KV8)) != 0
        lam = (inst.flags & int(Flag.LAMBDA)) != 0
        d, w, block, cap = inst.depth, inst.cols, inst.aux, inst.imm
        p, t = regs.position, self.rows
        bits = Signal(6, name="bits")  # 4 or 8 (codes), 32 (ACT32)
        kv, kv_rem = Signal(16, name="kv"), Signal(24, name="kv_rem")
        lay = StreamRegs("stream", mode, kv, w, d, block, cap, kv8)
        is_act32, is_token, is_channel = lay.act32, lay.token, lay.channel
        code_row, head_bytes, stat_row = lay.code_row, lay.head_bytes, lay.stat_row
        stats_offset, staging_offset, region_end = lay.stats_offset, lay.staging_offset, lay.end
        blk0, pending, full, rest = (Signal(32, name=n) for n in ("blk0", "pending", "full", "rest"))
        code_p, stat_p = Signal(WIDE, name="code_p"), Signal(WIDE, name="stat_p")
        block_codes, block_src = Signal(WIDE, name="block_codes"), Signal(WIDE, name="block_src")
        rest_src, rest_dst = Signal(WIDE, name="rest_src"), Signal(WIDE, name="rest_dst")

        lay.steps_a[0].assignments += ((bits, Mux(is_act32, 32, Mux(kv8, 8, 4))),)
        lay.steps_a[1].assignments += ((code_p, p * code_row), (stat_p, p * stat_row))
        common = [Divide(kv, kv_rem, w, d, 16), *lay.steps_a]
        channel = [
            lay.division,
            Divide(blk0, pending, p, block, 32),
            Divide(full, rest, pending + t, block, 32),
            Step((block_codes, (p - pending) * code_row), (stat_p, blk0 * stat_row),
                 (block_src, (block - pending) * 4 * w), (rest_src, (t - rest) * 4 * w), (rest_dst, pending * 4 * w)),
        ]
        finish = lay.steps_b

        # Λ (flag LAMBDA): the region of LambdaStreamLayout, and where the run's tokens and blocks go
        sinks, window, chunk = regs.sinks, regs.window, regs.chunk
        lyr = LambdaRegs("lambda", mode, kv, w, d, block, sinks, window, chunk, kv8)
        o = lyr.offsets
        past_sinks = p >= sinks
        rel = Mux(past_sinks, p - sinks, 0)  # window tokens before the run
        slot_rem, raw0 = Signal(24, name="slot_rem"), Signal(24, name="raw0")
        slot, wrap_code, wrap_stat = Signal(24, name="slot"), Signal(WIDE, name="wrap_code"), Signal(WIDE, name="wrap_stat")
        sink_first, sink_end = Signal(32, name="sink_first"), Signal(32, name="sink_end")
        win_first, win_end, win_slot0 = Signal(32, name="win_first"), Signal(32, name="win_end"), Signal(24, name="win_slot0")
        r0 = Signal(24, name="raw_row0")
        raw_start = Signal(WIDE, name="raw_start")
        bs, bw, ring = lyr.sink_block, lyr.window_block, lyr.raw_ring
        lambda_common = [Divide(kv, kv_rem, w, d, 16),
                         Step((bits, Mux(is_act32, 32, Mux(kv8, 8, 4))), (stat_row, 8 * kv)), *lyr.program,
                         Step((code_row, lyr.code_row), (head_bytes, lyr.head_bytes))]
        lambda_tokens = [
            Divide(None, slot_rem, rel, window + chunk, 32),
            Step((slot, Mux(past_sinks, sinks + slot_rem, p))),
            Step((code_p, slot * lyr.code_row), (stat_p, slot * stat_row), (wrap_code, sinks * lyr.code_row),
                 (wrap_stat, sinks * stat_row)),
        ]
        one = lambda v: Mux(v == 0, 1, v)  # noqa: E731 - a divisor that is unused when zero
        lambda_blocks = [
            Divide(None, raw0, rel, ring, 32),
            Divide(sink_first, None, Mux(past_sinks, sinks, p), one(bs), 32),
            Divide(sink_end, None, Mux(p + t >= sinks, sinks, p + t), one(bs), 32),
            Divide(win_first, None, rel, bw, 32),
            Divide(win_end, None, Mux(p + t >= sinks, p + t - sinks, 0), bw, 32),
            Divide(None, win_slot0, win_first, lyr.window_slots, 32),
            Divide(None, r0, win_first * bw, ring, 32),
            Step((raw_start, Mux(past_sinks, o["window_raw"] + raw0 * 4 * w, o["sink_raw"] + p * 4 * w)),
                 (block_codes, o["sink_codes"] + sink_first * bs * lyr.code_row),
                 (stat_p, o["sink_stats"] + sink_first * 8 * w), (block_src, o["sink_raw"] + sink_first * bs * 4 * w),
                 (rest_src, o["window_raw"] + r0 * 4 * w),
                 (rest_dst, o["window_codes"] + win_slot0 * bw * lyr.code_row),
                 (wrap_stat, o["window_stats"] + win_slot0 * 8 * w)),
        ]
        if (setup_cycles(common + finish), setup_cycles(channel), setup_cycles(lambda_common),
                setup_cycles(lambda_tokens), setup_cycles(lambda_blocks)) != (
                SETUP_COMMON, SETUP_CHANNEL, SETUP_LAMBDA, SETUP_LAMBDA_TOKENS, SETUP_LAMBDA_BLOCKS):
            raise AssertionError("KvQuantSequencer: the setup programs changed length; update the cycle constants")

        error = Signal(name="operand_error")
        source = Region(inst.src0_buf, inst.src0_addr, t * 4 * w)  # read whole before the emulator writes
        built = 0
        for b in self.code_bits:
            built = built | (bits == b)
        end = Mux(lam, lyr.end, region_end)
        m.d.comb += error.eq(
            (mode > int(KvMode.KV4_CHANNEL)) | (d == 0) | (kv_rem != 0) | (inst.dst_buf != KV)
            | (~is_act32 & ~built) | (~is_act32 & ~kv8 & d[0])
            | (is_token & (d > self.max_head_dim))
            | (is_channel & ((block == 0) | (block > self.max_block)))
            | Mux(lam, window == 0, (is_channel & (lay.cap_rem != 0)) | (p + t > cap))
            | (inst.dst_addr + end > kv_bytes)
            | beyond_addresses(source) | overlaps(source, Region(KV, inst.dst_addr, end)))

        # ------------------------------------------------------------ jobs: control -> issuer, writes
        jobs, job_w, job_r = layout_fifo(m, "jobs", self._job_layout(), 2)
        writes, write_w, write_r = layout_fifo(m, "writes", self._write_layout(), 4)
        push = Signal(name="push_job")
        room = jobs.w_rdy & writes.w_rdy
        m.d.comb += [jobs.w_en.eq(push), writes.w_en.eq(push)]

        def copy_job(src_buf, src, dst, nbytes):
            """Assignments pushing a copy of nbytes (> 0) bytes from src to dst (KV)."""
            shift = _log2(self.copy_bytes)
            beats = ceil_shift(nbytes, shift)
            return [job_w.kind.eq(COPY), job_w.count_a.eq(0), job_w.buf_b.eq(src_buf), job_w.addr_b.eq(src),
                    job_w.count_b.eq(beats), job_w.stride.eq(self.copy_bytes), job_w.nbytes.eq(self.copy_bytes),
                    job_w.last_nbytes.eq(nbytes - ((beats - 1) << shift)),
                    write_w.kind.eq(COPY), write_w.waddr.eq(dst)]

        # loop registers
        tok, head, grp, blk = (Signal(32, name=n) for n in ("tok", "head", "grp", "blk"))
        src_tok, head_src, head_code, head_stat = (Signal(WIDE, name=n) for n in
                                                   ("src_tok", "head_src", "head_code", "head_stat"))
        chan4, chan_code, chan8 = Signal(24, name="chan4"), Signal(24, name="chan_code"), Signal(24, name="chan8")
        code_tok = Signal(WIDE, name="code_tok")
        head_beats = ceil_shift(d, _log2(lanes))
        codes_base = inst.dst_addr
        stats_base = inst.dst_addr + Mux(lam, lyr.offsets["stats"], stats_offset)
        stage_base = inst.dst_addr + staging_offset
        nchan = Signal(16, name="nchan")
        m.d.comb += nchan.eq(Mux(w - grp * lanes < lanes, w - grp * lanes, lanes))

        drained = Signal(name="drained")
        raw_row = Signal(24, name="raw_row")

        def next_token():
            """Advance to the run's next token: its slot (Λ token slots wrap to S after S + W + C)."""
            wrap = lam & (slot + 1 == lyr.token_slots)
            m.d.sync += [tok.eq(tok + 1), src_tok.eq(src_tok + 4 * w), slot.eq(Mux(wrap, sinks, slot + 1)),
                         code_tok.eq(Mux(wrap, wrap_code, code_tok + code_row)),
                         stat_p.eq(Mux(wrap, wrap_stat, stat_p + stat_row))]
            with m.If(tok + 1 == t):
                m.next = "DRAIN"

        def next_group(block_done):
            """The next group of `lanes` channels, or `block_done()` after the block's last."""
            with m.If((grp + 1) * lanes >= w):
                m.d.sync += [grp.eq(0), chan4.eq(0), chan_code.eq(0), chan8.eq(0), blk.eq(blk + 1)]
                block_done()
            with m.Else():
                m.d.sync += [grp.eq(grp + 1), chan4.eq(chan4 + 4 * lanes),
                             chan_code.eq(chan_code + Mux(kv8, lanes, lanes // 2)), chan8.eq(chan8 + 8 * lanes)]

        def channel_job(addr_a, count_a, addr_b, count_b, codes, stats, buf_b=KV):
            """Assignments of a job quantizing one group of channels of a block (codes, stats: its
            block's addresses; the channel offsets are added here)."""
            return [job_w.kind.eq(CHANNEL), job_w.buf_a.eq(KV), job_w.addr_a.eq(addr_a + chan4),
                    job_w.count_a.eq(count_a), job_w.buf_b.eq(buf_b), job_w.addr_b.eq(addr_b + chan4),
                    job_w.count_b.eq(count_b), job_w.stride.eq(4 * w), job_w.nbytes.eq(4 * nchan),
                    job_w.last_nbytes.eq(4 * nchan), write_w.kind.eq(CHANNEL), write_w.waddr.eq(codes + chan_code),
                    write_w.wstep.eq(code_row), write_w.n.eq(nchan), write_w.saddr.eq(stats + chan8)]

        with m.FSM(name="control"):
            with m.State("IDLE"):
                with m.If(self.start & lam):
                    m.next = "LSETUP_0"
                with m.Elif(self.start):
                    m.next = "SETUP_0"
            setup_states(m, "LSETUP", lambda_common, divider, "LDISPATCH")
            setup_states(m, "LSETUP_TOKENS", lambda_tokens, divider, "CHECK")
            setup_states(m, "LSETUP_BLOCKS", lambda_blocks, divider, "CHECK")
            with m.State("LDISPATCH"):
                with m.If(is_channel):
                    m.next = "LSETUP_BLOCKS_0"
                with m.Else():
                    m.next = "LSETUP_TOKENS_0"
            setup_states(m, "SETUP", common, divider, "DISPATCH")
            setup_states(m, "SETUP_CHANNEL", channel, divider, "FINISH_0")
            setup_states(m, "FINISH", finish, divider, "CHECK")
            with m.State("DISPATCH"):
                with m.If(is_channel):
                    m.next = "SETUP_CHANNEL_0"
                with m.Else():
                    m.next = "FINISH_0"
            with m.State("CHECK"):
                m.d.sync += [tok.eq(0), head.eq(0), grp.eq(0), blk.eq(0), src_tok.eq(inst.src0_addr),
                             head_src.eq(0), head_code.eq(0), head_stat.eq(0), code_tok.eq(code_p),
                             chan4.eq(0), chan_code.eq(0), chan8.eq(0)]
                with m.If(error):
                    m.next = "ERROR"
                with m.Elif(t == 0):
                    m.next = "DRAIN"
                with m.Elif(lam & is_act32):
                    m.next = "LCOPY"
                with m.Elif(lam & is_channel):
                    m.d.sync += [code_tok.eq(raw_start), raw_row.eq(raw0)]
                    m.next = "RAW_COPY"
                with m.Elif(is_act32):
                    m.next = "COPY_ALL"
                with m.Elif(is_token):
                    m.next = "TOKENS"
                with m.Elif(full == 0):
                    m.next = "REST"
                with m.Else():
                    m.next = "BLOCKS"
            with m.State("ERROR"):
                m.d.comb += [self.done.eq(1), self.error.eq(1)]
                m.next = "IDLE"

            with m.State("COPY_ALL"):
                m.d.comb += push.eq(room)
                m.d.comb += copy_job(inst.src0_buf, inst.src0_addr, codes_base + code_p, t * code_row)
                with m.If(room):
                    m.next = "DRAIN"

            with m.State("TOKENS"):  # one job per (token, head)
                m.d.comb += push.eq(room)
                m.d.comb += [job_w.kind.eq(TOKEN), job_w.buf_a.eq(inst.src0_buf), job_w.addr_a.eq(src_tok + head_src),
                             job_w.count_a.eq(head_beats), job_w.count_b.eq(0), job_w.stride.eq(4 * lanes),
                             job_w.nbytes.eq(4 * lanes), job_w.last_nbytes.eq(4 * (d - ((head_beats - 1) * lanes))),
                             write_w.kind.eq(TOKEN), write_w.waddr.eq(codes_base + code_tok + head_code),
                             write_w.n.eq(d), write_w.saddr.eq(stats_base + stat_p + head_stat)]
                with m.If(room):
                    with m.If(head + 1 == kv):
                        m.d.sync += [head.eq(0), head_src.eq(0), head_code.eq(0), head_stat.eq(0)]
                        next_token()
                    with m.Else():
                        m.d.sync += [head.eq(head + 1), head_src.eq(head_src + 4 * d), head_code.eq(head_code + head_bytes),
                                     head_stat.eq(head_stat + 8)]

            with m.State("BLOCKS"):  # one job per (completed block, group of `lanes` channels)
                m.d.comb += push.eq(room)
                first_block = blk == 0
                m.d.comb += channel_job(stage_base, Mux(first_block, pending, 0),
                                        inst.src0_addr + Mux(first_block, 0, block_src),
                                        Mux(first_block, block - pending, block), codes_base + block_codes,
                                        stats_base + stat_p, buf_b=inst.src0_buf)

                def dense_block_done():
                    m.d.sync += [block_codes.eq(block_codes + block * code_row), stat_p.eq(stat_p + stat_row)]
                    with m.If(~first_block):
                        m.d.sync += block_src.eq(block_src + block * 4 * w)
                    with m.If(blk + 1 == full):
                        m.next = "BARRIER"

                with m.If(room):
                    next_group(dense_block_done)

            # Λ: ACT32 token slots, one copy per token
            with m.State("LCOPY"):
                m.d.comb += push.eq(room)
                m.d.comb += copy_job(inst.src0_buf, src_tok, codes_base + code_tok, 4 * w)
                with m.If(room):
                    next_token()

            # Λ per channel: every token's raw row first, then the blocks it completes (sinks, window)
            with m.State("RAW_COPY"):
                m.d.comb += push.eq(room)
                m.d.comb += copy_job(inst.src0_buf, src_tok, codes_base + code_tok, 4 * w)
                j = p + tok
                with m.If(room):
                    m.d.sync += [tok.eq(tok + 1), src_tok.eq(src_tok + 4 * w)]
                    with m.If(j + 1 == sinks):
                        m.d.sync += [raw_row.eq(0), code_tok.eq(o["window_raw"])]
                    with m.Elif((j >= sinks) & (raw_row + 1 == ring)):
                        m.d.sync += [raw_row.eq(0), code_tok.eq(o["window_raw"])]
                    with m.Else():
                        m.d.sync += [raw_row.eq(raw_row + 1), code_tok.eq(code_tok + 4 * w)]
                    with m.If(tok + 1 == t):
                        m.next = "LBARRIER"
            with m.State("LBARRIER"):
                with m.If(drained):
                    m.d.sync += [blk.eq(sink_first), grp.eq(0), chan4.eq(0), chan_code.eq(0), chan8.eq(0)]
                    with m.If(sink_first < sink_end):
                        m.next = "SINK_BLOCKS"
                    with m.Else():
                        m.d.sync += blk.eq(win_first)
                        m.next = "WINDOW_CHECK"
            with m.State("SINK_BLOCKS"):
                m.d.comb += push.eq(room)
                m.d.comb += channel_job(0, 0, codes_base + block_src, bs, codes_base + block_codes, codes_base + stat_p)

                def sink_block_done():
                    m.d.sync += [block_src.eq(block_src + bs * 4 * w), block_codes.eq(block_codes + bs * code_row),
                                 stat_p.eq(stat_p + 8 * w)]
                    with m.If(blk + 1 == sink_end):
                        m.d.sync += blk.eq(win_first)
                        m.next = "WINDOW_CHECK"

                with m.If(room):
                    next_group(sink_block_done)
            with m.State("WINDOW_CHECK"):
                with m.If(win_first < win_end):
                    m.d.sync += raw_row.eq(r0)
                    m.next = "WINDOW_BLOCKS"
                with m.Else():
                    m.next = "DRAIN"
            with m.State("WINDOW_BLOCKS"):  # block rows from raw row r0, wrapping at the raw ring's end
                m.d.comb += push.eq(room)
                head_rows = Mux(ring - raw_row < bw, ring - raw_row, bw)
                m.d.comb += channel_job(codes_base + rest_src, head_rows, codes_base + o["window_raw"], bw - head_rows,
                                        codes_base + rest_dst, codes_base + wrap_stat)

                def window_block_done():
                    past = raw_row + bw >= ring
                    last_slot = win_slot0 + 1 == lyr.window_slots
                    m.d.sync += [raw_row.eq(Mux(past, raw_row + bw - ring, raw_row + bw)),
                                 rest_src.eq(Mux(past, rest_src + (bw - ring) * 4 * w, rest_src + bw * 4 * w)),
                                 win_slot0.eq(Mux(last_slot, 0, win_slot0 + 1)),
                                 rest_dst.eq(Mux(last_slot, o["window_codes"], rest_dst + bw * code_row)),
                                 wrap_stat.eq(Mux(last_slot, o["window_stats"], wrap_stat + 8 * w))]
                    with m.If(blk + 1 == win_end):
                        m.next = "DRAIN"

                with m.If(room):
                    next_group(window_block_done)

            with m.State("REST"):  # the unfinished block's tokens to the staging area
                whole = full == 0
                m.d.comb += copy_job(inst.src0_buf, inst.src0_addr + Mux(whole, 0, rest_src),
                                     stage_base + Mux(whole, rest_dst, 0), Mux(whole, t, rest) * 4 * w)
                with m.If(whole | (rest != 0)):
                    m.d.comb += push.eq(room)
                    with m.If(room):
                        m.next = "DRAIN"
                with m.Else():
                    m.next = "DRAIN"

            with m.State("BARRIER"):  # the blocks are written before the staging area is
                with m.If(drained):
                    m.next = "REST"
            with m.State("DRAIN"):
                with m.If(drained):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

        # ------------------------------------------------------------ issuer: a job's beats as read commands
        job = Signal(self._job_layout(), name="job")
        issuing = Signal(name="issuing")
        ptr = Signal(ADDR_BITS, name="ptr")
        beat = Signal(24, name="beat")
        total = Signal(25, name="beats")
        cmd = reader.cmd.payload
        last_beat = beat + 1 == total
        m.d.comb += jobs.r_en.eq(~issuing)
        with m.If(~issuing & jobs.r_rdy):
            m.d.sync += [job.eq(job_r), issuing.eq(1), beat.eq(0), total.eq(job_r.count_a + job_r.count_b),
                         ptr.eq(Mux(job_r.count_a == 0, job_r.addr_b, job_r.addr_a))]
        m.d.comb += [reader.cmd.valid.eq(issuing), cmd.buf.eq(Mux(beat < job.count_a, job.buf_a, job.buf_b)),
                     cmd.addr.eq(ptr), cmd.nbytes.eq(Mux(last_beat, job.last_nbytes, job.nbytes)),
                     cmd.tag.eq(Cat(last_beat, job.kind))]
        with m.If(issuing & reader.cmd.ready):
            m.d.sync += [beat.eq(beat + 1), ptr.eq(Mux(beat + 1 == job.count_a, job.addr_b, ptr + job.stride))]
            with m.If(last_beat):
                m.d.sync += issuing.eq(0)

        # ------------------------------------------------------------ beats to the units
        chunk = reader.o.payload
        chunk_last, chunk_kind = chunk.tag[0], chunk.tag[1:3]
        values = replicated_act32_lanes(chunk.data, chunk.count >> 2, lanes)
        copy_valid, copy_ready = Signal(name="copy_valid"), Signal(name="copy_ready")
        ready = Mux(chunk_kind == COPY, copy_ready, 0)
        m.d.comb += copy_valid.eq(reader.o.valid & (chunk_kind == COPY))
        for b in self.code_bits:
            unit = token_units[b]
            selected = bits == b
            m.d.comb += [unit.i.valid.eq(reader.o.valid & (chunk_kind == TOKEN) & selected), unit.i.payload.last.eq(chunk_last)]
            m.d.comb += [unit.i.payload.x[lane].eq(values[lane]) for lane in range(lanes)]
            group = channel_units[b]
            all_ready = Cat(*(u.i.ready for u in group)).all()
            for lane, u in enumerate(group):
                m.d.comb += [u.i.valid.eq(reader.o.valid & (chunk_kind == CHANNEL) & selected & all_ready),
                             u.i.payload.x[0].eq(values[lane]), u.i.payload.last.eq(chunk_last)]
            ready = Mux(selected & (chunk_kind == TOKEN), unit.i.ready,
                        Mux(selected & (chunk_kind == CHANNEL), all_ready, ready))
        m.d.comb += reader.o.ready.eq(ready)

        # ------------------------------------------------------------ write FSM: codes, statistics, copies
        cur = Signal(self._write_layout(), name="write_job")
        left = Signal(16, name="left")
        stats = Signal(64 * lanes, name="stats")
        stats_count = Signal(range(8 * lanes + 1), name="stats_count")
        out = writer.i.payload
        code_step = Mux(bits == 8, lanes, lanes // 2)
        with m.FSM(name="write"):
            with m.State("IDLE"):
                m.d.comb += writes.r_en.eq(1)
                with m.If(writes.r_rdy):
                    m.d.sync += [cur.eq(write_r), left.eq(write_r.n)]
                    with m.Switch(write_r.kind):
                        with m.Case(COPY):
                            m.next = "COPY"
                        with m.Case(TOKEN):
                            m.next = "TOKEN"
                        with m.Case(CHANNEL):
                            m.next = "CHANNEL"
                m.d.comb += drained.eq(~writes.r_rdy & ~jobs.r_rdy & ~issuing & reader.idle & writer.idle)
            with m.State("COPY"):
                m.d.comb += [writer.i.valid.eq(copy_valid), copy_ready.eq(writer.i.ready), out.buf.eq(KV),
                             out.addr.eq(cur.waddr), out.count.eq(chunk.count), out.data.eq(chunk.data)]
                with m.If(copy_valid & writer.i.ready):
                    m.d.sync += cur.waddr.eq(cur.waddr + chunk.count)
                    with m.If(chunk_last):
                        m.next = "IDLE"
            for state, kind in (("TOKEN", TOKEN), ("CHANNEL", CHANNEL)):
                with m.State(state):
                    for b in self.code_bits:
                        with m.If(bits == b):
                            units = [token_units[b]] if kind == TOKEN else channel_units[b]
                            valid = Cat(*(u.o.valid for u in units)).all()
                            width = lanes if kind == TOKEN else 1
                            codes = Cat(*(u.o.payload.code[k] for u in units for k in range(width)))
                            if kind == TOKEN:
                                n = Mux(left < lanes, left, lanes)
                                row_stats = Cat(units[0].o.payload.scale, units[0].o.payload.offset)
                                count_stats = 8
                            else:
                                n = cur.n
                                row_stats = Cat(*(Cat(u.o.payload.scale, u.o.payload.offset) for u in units))
                                count_stats = 8 * cur.n
                            m.d.comb += [writer.i.valid.eq(valid), out.buf.eq(KV), out.addr.eq(cur.waddr),
                                         out.count.eq(n if b == 8 else n >> 1), out.data.eq(codes)]
                            for u in units:
                                m.d.comb += u.o.ready.eq(writer.i.ready & valid)
                            with m.If(valid & writer.i.ready):
                                m.d.sync += [cur.waddr.eq(cur.waddr + (code_step if kind == TOKEN else cur.wstep)),
                                             left.eq(left - lanes)]
                                with m.If(units[0].o.payload.last):
                                    m.d.sync += [stats.eq(row_stats), stats_count.eq(count_stats)]
                                    m.next = "STATS"
            with m.State("STATS"):
                m.d.comb += [writer.i.valid.eq(1), out.buf.eq(KV), out.addr.eq(cur.saddr), out.count.eq(stats_count),
                             out.data.eq(stats)]
                with m.If(writer.i.ready):
                    m.next = "IDLE"
        return m
