"""KV_QUANT and ATTENTION with flag LAMBDA: the Λ cache (S sinks + window W) in the KV buffer
(compiler/kv_layout.py, LambdaStreamLayout) and Λ attention.

Which tokens a chunk's queries see, when a per-channel block is read quantized and where keys
are rotated come from llmfab.sim.kv_ring and llmfab.sim.lambda_cache, the same code the integer
model runs; this module only reads and writes the cache bytes: it rebuilds each stream's
:class:`~llmfab.sim.lambda_cache.Timeline` from the KV buffer and calls
:func:`~llmfab.sim.lambda_cache.lambda_attention`.
"""

from __future__ import annotations

import numpy as np

from llmfab.compiler.isa import Buffer, Flag, Instruction, KvMode, Opcode
from llmfab.compiler.kv_layout import LambdaStreamLayout
from llmfab.sim.kv_ring import BlockLayout, LambdaShape
from llmfab.sim.lambda_cache import Timeline, lambda_attention
from llmfab.sim.numerics import AttentionConstants, Kv4Codes, kv4_dequantize, kv4_quantize

_KV8 = int(Flag.KV8)
KV = int(Buffer.KV)


def layout(emu, inst: Instruction, mode: int) -> LambdaStreamLayout:
    regs = emu.registers
    kv_heads = inst.cols // inst.depth if inst.opcode is Opcode.KV_QUANT else inst.sub
    return LambdaStreamLayout(KvMode(mode), regs.sinks, regs.window, regs.chunk, kv_heads, inst.depth, inst.aux,
                              8 if inst.flags & _KV8 else 4)


class LambdaView:
    """One Λ stream region of the KV buffer."""

    def __init__(self, emu, base: int, lay: LambdaStreamLayout):
        self.emu, self.base, self.lay = emu, base, lay
        self.sections = lay.sections()
        self.shape = LambdaShape(lay.sinks, lay.window)
        emu._check(KV, base, base + lay.nbytes)

    def rows(self, section: str, row_bytes: int) -> np.ndarray:
        offset, size = self.sections[section]
        return self.emu.span(KV, self.base + offset, size).reshape(-1, row_bytes)

    # -- codes, statistics and raw values as arrays [n, KV, D]
    def decode(self, raw: np.ndarray) -> np.ndarray:
        lay, n = self.lay, raw.shape[0]
        if lay.mode is KvMode.ACT32:
            return np.ascontiguousarray(raw).view(np.int32).astype(np.int64).reshape(n, lay.kv_heads, lay.head_dim)
        if lay.bits == 8:
            return raw.astype(np.int64).reshape(n, lay.kv_heads, lay.head_dim)
        return np.stack([raw & 0xF, raw >> 4], axis=-1).astype(np.int64).reshape(n, lay.kv_heads, lay.head_dim)

    def encode(self, values: np.ndarray) -> np.ndarray:
        lay = self.lay
        v = np.asarray(values, dtype=np.int64).reshape(values.shape[0], -1)
        if lay.mode is KvMode.ACT32:
            return v.astype(np.int32).view(np.uint8)
        if lay.bits == 8:
            return v.astype(np.uint8)
        return (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)

    # -- token streams (per-token codes or ACT32)
    def token_read(self, index: np.ndarray) -> np.ndarray:
        """ACT32 ``[KV, n, D]`` as stored of stream tokens ``index``."""
        lay = self.lay
        slots = lay.token_slot(index)
        values = self.decode(self.rows("codes", lay.code_row_bytes)[slots])
        if lay.mode is KvMode.ACT32:
            return values.transpose(1, 0, 2)
        stats = np.ascontiguousarray(self.rows("stats", 8 * lay.kv_heads)[slots]).view(np.int32).astype(np.int64)
        stats = stats.reshape(-1, lay.kv_heads, 1, 2).transpose(1, 0, 2, 3)  # [KV, n, 1, 2]
        return kv4_dequantize(Kv4Codes(values.transpose(1, 0, 2), stats[..., 0], stats[..., 1]))

    def token_store(self, x: np.ndarray, position: int) -> None:
        lay = self.lay
        slots = lay.token_slot(np.arange(position, position + x.shape[0]))
        if lay.mode is KvMode.ACT32:
            self.rows("codes", lay.code_row_bytes)[slots] = self.encode(x)
            return
        q = kv4_quantize(x.transpose(1, 0, 2), axis=-1, bits=lay.bits)  # per (head, token)
        self.rows("codes", lay.code_row_bytes)[slots] = self.encode(q.codes.transpose(1, 0, 2))
        stats = np.stack([q.scale[..., 0].T, q.offset[..., 0].T], axis=-1).astype(np.int32)  # [T, KV, 2]
        self.rows("stats", 8 * lay.kv_heads)[slots] = stats.view(np.uint8).reshape(len(slots), -1)

    def token_timeline(self, position: int, count: int) -> Timeline:
        """The sinks and the window tokens the run's first query sees (what the LOADs brought in),
        then the run's own tokens."""
        s, w = self.lay.sinks, self.lay.window
        held = np.concatenate([np.arange(min(position, s)), np.arange(max(s, position - w + 1), position)])
        index = np.concatenate([held, np.arange(position, position + count)]).astype(np.int64)
        values = self.token_read(index)
        return Timeline(index, values, values, index)

    # -- per-channel block stores
    def stores(self) -> list[tuple[str, BlockLayout, int, int]]:
        """(prefix, kv_ring layout, block slots, raw rows) of the sink store (if S > 0) and the window store."""
        lay, out = self.lay, []
        if lay.sinks:
            out.append(("sink", BlockLayout.sinks(self.shape, lay.block_tokens), lay.sink_slots, lay.sinks))
        out.append(("window", BlockLayout.window(self.shape, lay.block_tokens), lay.window_slots, lay.raw_ring))
        return out

    @staticmethod
    def appended(store: BlockLayout, end: int) -> int:
        """Tokens of the store among stream positions 0..end-1."""
        count = max(end - store.first, 0)
        return count if store.limit is None else min(count, store.limit)

    def raw_rows(self, prefix: str, store: BlockLayout, ring: int, index: np.ndarray):
        lay = self.lay
        return self.rows(f"{prefix}_raw", 4 * lay.width), (np.asarray(index) - store.first) % ring

    def block_read(self, prefix: str, store: BlockLayout, slots: int, blocks: np.ndarray) -> np.ndarray:
        """ACT32 ``[KV, n*b, D]`` of quantized blocks."""
        lay, b = self.lay, store.block_tokens
        if not len(blocks):
            return np.zeros((lay.kv_heads, 0, lay.head_dim), dtype=np.int64)
        at = blocks % slots
        codes = self.decode(self.rows(f"{prefix}_codes", b * lay.code_row_bytes)[at].reshape(-1, lay.code_row_bytes))
        codes = codes.reshape(len(at), b, lay.kv_heads, lay.head_dim).transpose(2, 0, 1, 3)  # [KV, n, b, D]
        stats = np.ascontiguousarray(self.rows(f"{prefix}_stats", 8 * lay.width)[at]).view(np.int32).astype(np.int64)
        stats = stats.reshape(len(at), lay.kv_heads, lay.head_dim, 2).transpose(1, 0, 2, 3)[:, :, None]
        values = kv4_dequantize(Kv4Codes(codes, stats[..., 0], stats[..., 1]))
        return values.reshape(lay.kv_heads, -1, lay.head_dim)

    def raw_read(self, prefix: str, store: BlockLayout, ring: int, index: np.ndarray) -> np.ndarray:
        rows, at = self.raw_rows(prefix, store, ring, index)
        lay = self.lay
        data = np.ascontiguousarray(rows[at]).view(np.int32).astype(np.int64)
        return data.reshape(len(at), lay.kv_heads, lay.head_dim).transpose(1, 0, 2)

    def block_store(self, x: np.ndarray, position: int) -> None:
        lay = self.lay
        stream = np.arange(position, position + x.shape[0])
        for prefix, store, slots, ring in self.stores():
            mine = (stream >= store.first) & (stream < store.first + (store.limit or np.iinfo(np.int64).max))
            if not mine.any():
                continue
            rows, at = self.raw_rows(prefix, store, ring, stream[mine])
            rows[at] = x[mine].astype(np.int32).view(np.uint8).reshape(int(mine.sum()), -1)
            b = store.block_tokens
            before, after = self.appended(store, position), self.appended(store, position + x.shape[0])
            for block in range(before // b, after // b):
                tokens = store.first + block * b + np.arange(b)
                q = kv4_quantize(self.raw_read(prefix, store, ring, tokens), axis=1, bits=lay.bits)  # [KV, b, D]
                code_rows = self.rows(f"{prefix}_codes", b * lay.code_row_bytes)
                code_rows[block % slots] = self.encode(q.codes.transpose(1, 0, 2)).reshape(-1)
                stats = np.stack([q.scale[:, 0], q.offset[:, 0]], axis=-1).astype(np.int32)  # [KV, D, 2]
                self.rows(f"{prefix}_stats", 8 * lay.width)[block % slots] = stats.view(np.uint8).reshape(-1)

    def block_timeline(self, position: int, count: int) -> Timeline:
        """Per store: the held blocks from the one holding the oldest token the run's first query
        sees, the staged tokens of the unfinished block, then the run's own tokens (the LOADs bring
        in exactly the blocks and staged tokens before the run)."""
        parts = []
        oldest = max(position - self.lay.window + 1, 0)
        for prefix, store, slots, ring in self.stores():
            b = store.block_tokens
            before, after = self.appended(store, position), self.appended(store, position + count)
            first, stop = store.held_blocks(before)
            if store.limit is None:  # the window ring (every sink stays visible)
                first = max(first, min(int(store.block_of(max(oldest, store.first))), stop))
            held = self.block_read(prefix, store, slots, np.arange(first, stop))
            done = after // b
            waiting = store.first + np.arange(stop * b, after)
            raw_waiting = self.raw_read(prefix, store, ring, waiting)
            quantized = self.block_read(prefix, store, slots, np.arange(stop, done))
            tail = raw_waiting[:, (done - stop) * b:]
            index = np.arange(store.first + first * b, store.first + after)
            parts.append(Timeline(index, np.concatenate([held, raw_waiting], axis=1),
                                  np.concatenate([held, quantized, tail], axis=1), store.ready_at(index)))
        return Timeline.join(parts)

    def store(self, x: np.ndarray, position: int) -> None:
        (self.block_store if self.lay.mode is KvMode.KV4_CHANNEL else self.token_store)(x, position)

    def timeline(self, position: int, count: int) -> Timeline:
        if self.lay.mode is KvMode.KV4_CHANNEL:
            return self.block_timeline(position, count)
        return self.token_timeline(position, count)


def view(emu, base: int, lay: LambdaStreamLayout) -> LambdaView:
    """The LambdaView of the region at ``base`` (kept by the emulator: its layout arithmetic is the
    same for every run; the bytes are read from the buffer each time)."""
    key = (base, lay)
    cached = emu.lambda_views.get(key)
    if cached is None:
        cached = emu.lambda_views[key] = LambdaView(emu, base, lay)
    return cached


def kv_quant(emu, inst: Instruction, t: int, p: int) -> int:
    lay = layout(emu, inst, inst.mode)
    x = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols).reshape(t, lay.kv_heads, lay.head_dim)
    view(emu, inst.dst_addr, lay).store(x, p)
    return x.size * 4


def attend(emu, inst: Instruction, t: int, p: int) -> int:
    keys = view(emu, inst.src1_addr, layout(emu, inst, inst.mode & 3)).timeline(p, t)
    values = view(emu, inst.stride, layout(emu, inst, inst.mode >> 2)).timeline(p, t)
    d, regs = inst.depth, emu.registers
    slots = regs.sinks + regs.window
    table = emu.read_act32(int(Buffer.WGT), inst.imm, slots, d)
    q = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols).reshape(t, inst.cols // d, d).transpose(1, 0, 2)
    mixed = lambda_attention(q, keys, values, p, LambdaShape(regs.sinks, regs.window), table[:, :d // 2],
                             table[:, d // 2:], AttentionConstants.for_head_dim(d))
    emu.write_act32(inst.dst_buf, inst.dst_addr, mixed.transpose(1, 0, 2).reshape(t, inst.cols))
    return (keys.stored.size + values.stored.size) * 4
