"""The COMPUTE opcodes of the emulator (docs/isa.md), each one vectorized integer op of
:mod:`llmfab.sim.numerics` on buffer regions.

Every handler takes the emulator (for buffer access and its tile cache), the instruction, its row
count T and the position register P, and returns the bytes it read from on-chip buffers (for the
per-opcode statistics).
"""

from __future__ import annotations

import numpy as np

from llmfab.compiler.isa import ActWidth, Flag, GemmMode, Instruction, KvMode, Opcode
from llmfab.compiler.kv_layout import KvStreamLayout
from llmfab.compiler.memory_plan import A8_HEADER_BYTES, EMBED_HEADER_BYTES, NORM_HEADER_BYTES, act_row_stride
from llmfab.sim import emulator_lambda
from llmfab.sim.emulator_gemm import finish_rows
from llmfab.sim.numerics import (
    ActCodes,
    AttentionConstants,
    IntegerWeight,
    Kv4Codes,
    NormWeight,
    apply_rope,
    attention,
    causal_visibility,
    embed,
    kv4_dequantize,
    kv4_quantize,
    multiply,
    requantize_per_token,
    residual_add,
    rmsnorm,
    signed_weights,
    silu,
)

_HALF_ZERO, _ACC_FIRST, _ACC_LAST, _A16, _LAMBDA, _KV8 = (
    int(f) for f in (Flag.HALF_ZERO, Flag.ACC_FIRST, Flag.ACC_LAST, Flag.A16, Flag.LAMBDA, Flag.KV8))
_SPARSE_MODES = {int(m) for m in GemmMode if m.sparse}


def embed_rows(emu, inst: Instruction, t: int, p: int) -> int:
    rows = emu.rows_view(inst.src0_buf, inst.src0_addr, t, EMBED_HEADER_BYTES + inst.cols, inst.stride)
    header = np.ascontiguousarray(rows[:, :EMBED_HEADER_BYTES]).view(np.uint16)
    mantissa, row_shift = header[:, 0].astype(np.int64), header[:, 1].view(np.int16).astype(np.int64)
    zeros = header[:, 2].astype(np.int64)
    codes = rows[:, EMBED_HEADER_BYTES:EMBED_HEADER_BYTES + inst.cols].astype(np.int64)
    half = bool(inst.flags & _HALF_ZERO)
    values = signed_weights(2 * codes if half else codes, zeros[:, None], inst.cols)
    table = IntegerWeight(values, mantissa[:, None], row_shift, inst.cols)
    emu.write_act32(inst.dst_buf, inst.dst_addr, embed(np.arange(t), table))
    return rows.nbytes


def norm_weight(emu, inst: Instruction) -> NormWeight:
    raw = emu.span(inst.src1_buf, inst.src1_addr, NORM_HEADER_BYTES + 4 * inst.cols)
    header = raw[:NORM_HEADER_BYTES]
    eps = int(header[:8].view(np.int64)[0])
    gain_shift, sqrt_m, sqrt_s = (int(v) for v in header[8:20].view(np.int32))
    gain = raw[NORM_HEADER_BYTES:].view(np.int32).astype(np.int64)
    return NormWeight(gain, gain_shift, sqrt_m, sqrt_s, eps)


def rms_norm(emu, inst: Instruction, t: int, p: int) -> int:
    x = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols)
    emu.write_act32(inst.dst_buf, inst.dst_addr, rmsnorm(x, norm_weight(emu, inst)))
    return x.size * 4


def write_a16(emu, buf: int, addr: int, act: ActCodes) -> None:
    """A16 rows (docs/isa.md): the A8 scale header, then int16 codes, stride padded to 8 bytes."""
    rows, n = act.codes.shape
    view = emu.rows_view(buf, addr, rows, A8_HEADER_BYTES + 2 * n, act_row_stride(n, ActWidth.A16))
    header = np.stack([act.scale_mantissa, act.scale_exponent], axis=-1).astype("<i4")
    view[:, :A8_HEADER_BYTES] = header.view(np.uint8).reshape(rows, A8_HEADER_BYTES)
    view[:, A8_HEADER_BYTES:] = act.codes.astype("<i2").view(np.uint8).reshape(rows, 2 * n)


def read_a16(emu, buf: int, addr: int, rows: int, stride: int, k0: int, k: int) -> ActCodes:
    """Columns ``k0 .. k0+k-1`` of A16 rows with their tokens' steps."""
    view = emu.rows_view(buf, addr, rows, A8_HEADER_BYTES + 2 * (k0 + k), stride)
    header = np.ascontiguousarray(view[:, :A8_HEADER_BYTES]).view("<i4").astype(np.int64)
    codes = np.ascontiguousarray(view[:, A8_HEADER_BYTES + 2 * k0:]).view("<i2").astype(np.int64)
    return ActCodes(codes, header[:, 0], header[:, 1], 16)


def requant(emu, inst: Instruction, t: int, p: int) -> int:
    width = ActWidth(inst.mode)
    x = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols)
    act = requantize_per_token(x, width.bits)
    if width is ActWidth.A16:
        write_a16(emu, inst.dst_buf, inst.dst_addr, act)
    else:
        emu.write_a8(inst.dst_buf, inst.dst_addr, act)
    return x.size * 4


def gemm(emu, inst: Instruction, t: int, p: int) -> int:
    k0, row_stride = inst.imm & 0xFFFF, inst.imm >> 16
    if inst.flags & _A16:
        act = read_a16(emu, inst.src0_buf, inst.src0_addr, t, row_stride, k0, inst.depth)
    else:
        act = emu.read_a8(inst.src0_buf, inst.src0_addr, t, row_stride, k0, inst.depth)
    shape, nbytes = emu.gemm_shape(inst)
    tile = emu.prepared_tile(inst, shape, nbytes)
    rows = tile.row_sums(act.codes, act.bits)
    if not inst.flags & _ACC_FIRST:
        rows = rows + emu.accumulator(inst, t)
    if inst.flags & _ACC_LAST:
        emu.write_act32(inst.dst_buf, inst.dst_addr, finish_rows(rows, act, tile.row_shift), inst.stride)
    else:
        emu.store_accumulator(inst, rows)
    return act.codes.size * act.bits // 8 + nbytes


def rope(emu, inst: Instruction, t: int, p: int) -> int:
    d = inst.depth
    x = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols)
    table = emu.read_act32(inst.src1_buf, inst.src1_addr, t, d)
    heads = x.reshape(t, inst.cols // d, d).transpose(1, 0, 2)
    rotated = apply_rope(heads, table[:, :d // 2], table[:, d // 2:])
    emu.write_act32(inst.dst_buf, inst.dst_addr, rotated.transpose(1, 0, 2).reshape(t, inst.cols))
    return (x.size + table.size) * 4


def stream_layout(inst: Instruction, mode: KvMode) -> KvStreamLayout:
    kv_heads = inst.cols // inst.depth if inst.opcode is Opcode.KV_QUANT else inst.sub
    return KvStreamLayout(KvMode(mode), inst.imm, kv_heads, inst.depth, inst.aux, 8 if inst.flags & _KV8 else 4)


class StreamView:
    """A KV stream region in the KV buffer, read and written per docs/isa.md."""

    def __init__(self, emu, base: int, lay: KvStreamLayout):
        self.emu, self.base, self.lay = emu, base, lay

    def codes(self, first: int, count: int) -> np.ndarray:
        """``[count, KV, D]`` codes (int64) or ACT32 values of slots first..first+count-1."""
        lay = self.lay
        raw = self.emu.span(3, self.base + lay.codes_offset + first * lay.code_row_bytes, count * lay.code_row_bytes)
        if lay.mode is KvMode.ACT32:
            return raw.view(np.int32).astype(np.int64).reshape(count, lay.kv_heads, lay.head_dim)
        if lay.bits == 8:
            return raw.astype(np.int64).reshape(count, lay.kv_heads, lay.head_dim)
        nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).astype(np.int64)
        return nibbles.reshape(count, lay.kv_heads, lay.head_dim)

    def put_codes(self, first: int, values: np.ndarray) -> None:
        lay = self.lay
        values = np.asarray(values, dtype=np.int64).reshape(values.shape[0], -1)
        if lay.mode is KvMode.ACT32:
            raw = values.astype(np.int32).view(np.uint8)
        elif lay.bits == 8:
            raw = values.astype(np.uint8)
        else:
            raw = (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)
        start = self.base + lay.codes_offset + first * lay.code_row_bytes
        self.emu.put(3, start, raw.reshape(-1))

    def stats(self, first: int, count: int) -> np.ndarray:
        """int64 ``[count, KV, 2]`` (per token) or ``[count, KV, D, 2]`` (per block) (scale, offset)."""
        lay = self.lay
        raw = self.emu.span(3, self.base + lay.stats_offset + first * lay.stat_row_bytes, count * lay.stat_row_bytes)
        shape = (count, lay.kv_heads, 2) if lay.mode is KvMode.KV4_TOKEN else (count, lay.kv_heads, lay.head_dim, 2)
        return raw.view(np.int32).astype(np.int64).reshape(shape)

    def put_stats(self, first: int, scale: np.ndarray, offset: np.ndarray) -> None:
        lay = self.lay
        data = np.stack([scale, offset], axis=-1)
        check = np.iinfo(np.int32)
        if data.size and (data.min() < check.min or data.max() > check.max):
            raise OverflowError("KV4 statistics exceed int32")
        self.emu.put(3, self.base + lay.stats_offset + first * lay.stat_row_bytes,
                     data.astype(np.int32).view(np.uint8).reshape(-1))

    def staging(self, count: int) -> np.ndarray:
        lay = self.lay
        raw = self.emu.span(3, self.base + lay.staging_offset, 4 * count * lay.width)
        return raw.view(np.int32).astype(np.int64).reshape(count, lay.kv_heads, lay.head_dim)

    def put_staging(self, values: np.ndarray) -> None:
        self.emu.put(3, self.base + self.lay.staging_offset, values.astype(np.int32).view(np.uint8).reshape(-1))

    def append(self, x: np.ndarray, position: int) -> None:
        """Store ACT32 tokens ``[T, KV, D]`` at stream positions position.. (KvStream.append's rules)."""
        lay, t = self.lay, x.shape[0]
        if position + t > lay.capacity:
            raise IndexError(f"positions up to {position + t - 1} exceed the stream capacity {lay.capacity}")
        if lay.mode is KvMode.ACT32:
            self.put_codes(position, x)
        elif lay.mode is KvMode.KV4_TOKEN:
            block = kv4_quantize(x.transpose(1, 0, 2), axis=-1, bits=lay.bits)  # [KV, T, D], stats per (head, token)
            self.put_codes(position, block.codes.transpose(1, 0, 2))
            self.put_stats(position, block.scale[..., 0].T, block.offset[..., 0].T)
        else:
            b = lay.block_tokens
            pending = position % b
            staged = np.concatenate([self.staging(pending), x], axis=0)
            first_block = position // b
            full = staged.shape[0] // b
            if full:
                blocks = staged[:full * b].reshape(full, b, lay.kv_heads, lay.head_dim).transpose(2, 0, 1, 3)
                q = kv4_quantize(blocks, axis=2, bits=lay.bits)  # [KV, blocks, B, D], stats per (head, block, channel)
                self.put_codes(first_block * b, q.codes.transpose(1, 2, 0, 3).reshape(full * b, -1))
                self.put_stats(first_block, q.scale[:, :, 0].transpose(1, 0, 2), q.offset[:, :, 0].transpose(1, 0, 2))
            rest = staged[full * b:]
            if rest.size:
                self.put_staging(rest)

    def read(self, count: int) -> np.ndarray:
        """ACT32 ``[KV, count, D]`` of positions 0..count-1, as KvStream.read."""
        lay = self.lay
        if lay.mode is KvMode.ACT32:
            return self.codes(0, count).transpose(1, 0, 2)
        if lay.mode is KvMode.KV4_TOKEN:
            stats = self.stats(0, count).transpose(1, 0, 2)[..., None, :]  # [KV, T, 1, 2]
            codes = self.codes(0, count).transpose(1, 0, 2)
            return kv4_dequantize(Kv4Codes(codes, stats[..., 0], stats[..., 1]))
        b = lay.block_tokens
        full = count // b
        parts = []
        if full:
            codes = self.codes(0, full * b).reshape(full, b, lay.kv_heads, lay.head_dim).transpose(2, 0, 1, 3)
            stats = self.stats(0, full).transpose(1, 0, 2, 3)[:, :, None]  # [KV, blocks, 1, D, 2]
            values = kv4_dequantize(Kv4Codes(codes, stats[..., 0], stats[..., 1]))
            parts.append(values.reshape(lay.kv_heads, full * b, lay.head_dim))
        if count % b:
            parts.append(self.staging(count % b).transpose(1, 0, 2))
        return np.concatenate(parts, axis=1)


def kv_quant(emu, inst: Instruction, t: int, p: int) -> int:
    if inst.flags & _LAMBDA:
        return emulator_lambda.kv_quant(emu, inst, t, p)
    lay = stream_layout(inst, inst.mode)
    x = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols).reshape(t, lay.kv_heads, lay.head_dim)
    emu.check_kv_region(inst, inst.dst_addr, lay)
    StreamView(emu, inst.dst_addr, lay).append(x, p)
    return x.size * 4


def attend(emu, inst: Instruction, t: int, p: int) -> int:
    if inst.flags & _LAMBDA:
        return emulator_lambda.attend(emu, inst, t, p)
    keys_lay = stream_layout(inst, inst.mode & 3)
    values_lay = stream_layout(inst, inst.mode >> 2)
    emu.check_kv_region(inst, inst.src1_addr, keys_lay)
    emu.check_kv_region(inst, inst.stride, values_lay)
    d = inst.depth
    q = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols).reshape(t, inst.cols // d, d).transpose(1, 0, 2)
    count = p + t
    keys = StreamView(emu, inst.src1_addr, keys_lay).read(count)
    values = StreamView(emu, inst.stride, values_lay).read(count)
    mixed = attention(q, keys, values, AttentionConstants.for_head_dim(d), causal_visibility(t, count))
    emu.write_act32(inst.dst_buf, inst.dst_addr, mixed.transpose(1, 0, 2).reshape(t, inst.cols))
    return (keys.size + values.size) * 4


def silu_mul(emu, inst: Instruction, t: int, p: int) -> int:
    gate = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols)
    up = emu.read_act32(inst.src1_buf, inst.src1_addr, t, inst.cols)
    emu.write_act32(inst.dst_buf, inst.dst_addr, multiply(silu(gate), up))
    return (gate.size + up.size) * 4


def add(emu, inst: Instruction, t: int, p: int) -> int:
    a = emu.read_act32(inst.src0_buf, inst.src0_addr, t, inst.cols)
    b = emu.read_act32(inst.src1_buf, inst.src1_addr, t, inst.cols)
    emu.write_act32(inst.dst_buf, inst.dst_addr, residual_add(a, b))
    return (a.size + b.size) * 4


HANDLERS = {
    Opcode.EMBED: embed_rows,
    Opcode.RMSNORM: rms_norm,
    Opcode.REQUANT: requant,
    Opcode.GEMM: gemm,
    Opcode.ROPE: rope,
    Opcode.KV_QUANT: kv_quant,
    Opcode.ATTENTION: attend,
    Opcode.SILU_MUL: silu_mul,
    Opcode.ADD: add,
}

__all__ = ["HANDLERS", "ActCodes", "A8_HEADER_BYTES", "StreamView"]
