"""The scheduler / mapper: a compressed model + a HardwareConfig -> placed data and the two
instruction routines, ``prefill`` (a chunk of up to C tokens) and ``decode`` (one token).

Each op of the lowered cascade (docs/ir.md, "Lowering") maps to one engine instruction per tile:

| cascade op | opcode | engine mode |
| --- | --- | --- |
| embedding gather + dequantize | LOAD_ROWS, EMBED | load unit, special-function unit |
| RMSNorm | RMSNORM | special-function unit |
| A8 requantization | REQUANT | special-function unit |
| group-wise W·A (2:4 indices) | GEMM per weight tile | decode GEMV / prefill GEMM, dense or 2:4 |
| RoPE | ROPE | special-function unit |
| KV cache store (KV4) | KV_QUANT, STORE | special-function unit, store unit |
| softmax attention | ATTENTION | attention array (A8 x KV4) |
| SwiGLU | SILU_MUL | special-function unit |
| residual add | ADD | special-function unit |
| LM head | GEMM per tile, STORE | as the linears |

Weight tiles stream through a ring in the weight buffer (compiler/weight_ring.py): after each GEMM
the LOADs of the following tiles are emitted as far as the freed space allows, so the LOAD unit
runs several tiles ahead (also through attention, norms and requantization); tokens
(compiler/tokens.py) enforce the waits. Norm records are loaded one norm ahead of their use,
after a GEMM. A Λ layer's cache moves by RING transfers (docs/isa.md) of only the slots a run
reads (LOAD) or changes (STORE); the next layer's cache LOADs follow this layer's attention.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import (
    ActWidth,
    Buffer,
    Flag,
    GemmMode,
    Instruction,
    KvMode,
    Opcode,
    RingPart,
    RowSource,
    StartSource,
)
from llmfab.compiler.kv_layout import KvStreamLayout, LambdaStreamLayout, MovedSection
from llmfab.compiler.memory_plan import (
    MAX_ROWS,
    BufferPlanError,
    MemoryPlan,
    Tile,
    a8_stride,
    act_row_stride,
    embed_stride,
    norm_bytes,
    plan_memory,
)
from llmfab.compiler.model_plan import LinearSpec, ModelPlan, WeightSource
from llmfab.compiler.placement import HbmPlacement, Region
from llmfab.compiler.tokens import Step, assign_tokens
from llmfab.compiler.weight_ring import WeightRing
from llmfab.compiler.weight_tiles import align, pack_tile

ROUTINES = ("prefill", "decode")


@dataclass
class Compiled:
    """Everything the program writer needs."""

    plan: ModelPlan
    hardware: HardwareConfig
    memory: MemoryPlan
    placement: HbmPlacement
    image_sizes: list[int]
    instructions: list[Instruction]
    entries: dict[str, dict]
    embed_half_zero: bool
    report: dict = field(default_factory=dict)


def compile_model(plan: ModelPlan, hardware: HardwareConfig, weights: WeightSource | None) -> Compiled:
    """Plan buffers, place data (and fill the images when ``weights`` is given), emit both routines."""
    memory = plan_memory(plan, hardware)
    placement = HbmPlacement(hardware, with_images=weights is not None)
    embed_half_zero = bool(weights.embedding()["half_zero"]) if weights is not None else False
    _place_constants(plan, memory, placement, weights)
    image_sizes = placement.bytes_per_pc()
    _place_runtime(plan, memory, placement)
    placement.check_capacity()
    instructions: list[Instruction] = []
    entries = {}
    for routine in ROUTINES:
        emitter = RoutineEmitter(plan, hardware, memory, placement, routine, embed_half_zero)
        steps = emitter.emit()
        entries[routine] = {"entry": len(instructions), "count": len(steps)}
        instructions.extend(assign_tokens(steps))
    compiled = Compiled(plan, hardware, memory, placement, image_sizes, instructions, entries, embed_half_zero)
    compiled.report = build_report(compiled)
    return compiled


# ---------------------------------------------------------------- placement


def norm_names(num_layers: int) -> list[str]:
    """The norm records in the order the routines use them."""
    return [f"norm.{layer}.{which}" for layer in range(num_layers) for which in ("input", "post")] + ["norm.final"]


def tile_region_name(tile: Tile) -> str:
    return f"w.{tile.name}"


def kv_region_name(layer: int, stream: str, section: str) -> str:
    return f"kv.{layer}.{stream}.{section}"


def _place_constants(plan: ModelPlan, memory: MemoryPlan, placement: HbmPlacement,
                     weights: WeightSource | None) -> None:
    from llmfab.sim.linear_ops import scale_multipliers
    from llmfab.sim.vector_ops import prepare_norm, rope_tables

    c = plan.config
    for name in norm_names(c.num_layers):  # chunked over the ports: a norm LOAD streams from all of them
        placement.chunked(name, "norm", norm_bytes(c.hidden_size))
    if weights is not None:
        for layer in range(c.num_layers):
            for which, gamma in zip(("input", "post"), weights.norm_gammas(layer)):
                placement.write(placement.regions[f"norm.{layer}.{which}"], norm_record(prepare_norm(gamma, c.rms_norm_eps)))
        placement.write(placement.regions["norm.final"],
                        norm_record(prepare_norm(weights.norm_gammas(None), c.rms_norm_eps)))
    for spec in plan.all_linears():
        fields = weights.linear(spec) if weights is not None else None
        multipliers = scale_multipliers(fields["scales"], 1 if spec.half_zero else 0) if fields else None
        for tile in memory.tiles(spec):
            region = placement.chunked(tile_region_name(tile), "weights", tile.shape.nbytes)
            if fields is not None:
                placement.write(region, tile_bytes(tile, fields, multipliers))
    row = embed_stride(c.hidden_size)
    table = placement.striped("embedding", "embedding", c.vocab_size, row)
    if weights is not None:
        placement.write(table, embedding_rows(weights.embedding()))
    rope = placement.striped("rope", "rope", memory.rope_rows, 4 * c.head_dim)
    if weights is not None:
        cos, sin = rope_tables(weights.inv_freq(), np.arange(memory.rope_rows))
        placement.write(rope, np.concatenate([cos, sin], axis=1).astype(np.int32))


def _place_runtime(plan: ModelPlan, memory: MemoryPlan, placement: HbmPlacement) -> None:
    c = plan.config
    placement.single("input.ids", "input", 4 * memory.chunk)
    for layer in range(c.num_layers):
        for stream, lay in (("keys", memory.keys), ("values", memory.values)):
            if isinstance(lay, LambdaStreamLayout):  # constant size; each part's slots cut over the ports
                for section in lay.moved_sections():
                    split = slot_split(section.slot_bytes, placement.ports)
                    placement.striped(kv_region_name(layer, stream, section.name), "kv", section.slots << split,
                                      section.slot_bytes >> split)
                continue
            for section, rows, row_bytes in kv_sections(lay):
                name = kv_region_name(layer, stream, section)
                if section == "staging":  # one block moved whole: split over the ports, not one row in one
                    placement.split(name, "kv", align(row_bytes))
                else:
                    placement.striped(name, "kv", rows, row_bytes)
    placement.striped("output.logits", "output", memory.chunk, 4 * c.vocab_size)


def slot_split(slot_bytes: int, ports: int) -> int:
    """log2 of the HBM rows one Λ cache slot is cut into (the RING transfers' ``split_shift``): the
    most, a power of two up to the HBM ports, that keeps every row a multiple of 64 bytes, so one
    slot (the token a decode step stores) streams from that many pseudo-channels at once."""
    k = 0
    while 2 << k <= ports and slot_bytes % ((2 << k) * 64) == 0:
        k += 1
    return k


def kv_sections(lay: KvStreamLayout) -> list[tuple[str, int, int]]:
    """(section, HBM rows, bytes per row) of a stream: token rows, or block rows per channel."""
    block = lay.block_tokens if lay.mode is KvMode.KV4_CHANNEL else 1
    out = [("codes", lay.capacity // block, block * lay.code_row_bytes)]
    if lay.stat_rows:
        out.append(("stats", lay.stat_rows, lay.stat_row_bytes))
    if lay.staging_bytes:
        out.append(("staging", 1, lay.staging_bytes))
    return out


def norm_record(norm) -> bytes:
    header = np.zeros(6, dtype=np.int32)
    header[:2] = np.array([norm.eps_scaled], dtype=np.int64).view(np.int32)
    header[2:5] = (norm.gain_shift, norm.sqrt_n_mantissa, norm.sqrt_n_shift)
    return header.tobytes() + np.asarray(norm.gain, dtype=np.int32).tobytes()


def tile_bytes(tile: Tile, fields: dict, multipliers) -> bytes:
    mantissas, row_shifts = multipliers
    spec = tile.spec
    n = slice(tile.n0, tile.n1)
    g = slice(tile.k0 // spec.group_size, tile.k1 // spec.group_size)
    kc = slice(tile.k0 // 2, tile.k1 // 2) if spec.sparse else slice(tile.k0, tile.k1)
    if np.any(row_shifts[n] < -128) or np.any(row_shifts[n] > 127):
        raise ValueError(f"{spec.label}: row shifts outside int8")
    patterns = fields["patterns"][n, tile.k0 // 4:tile.k1 // 4] if spec.sparse else None
    return pack_tile(tile.shape, fields["codes"][n, kc], fields["zeros"][n, g], mantissas[n, g],
                     row_shifts[n], patterns)


def embedding_rows(table: dict) -> np.ndarray:
    """uint8 ``[vocab, 8 + align8(hidden)]`` embedding row records (docs/isa.md)."""
    from llmfab.sim.linear_ops import scale_multipliers

    codes = np.asarray(table["codes"], dtype=np.uint8)
    vocab, hidden = codes.shape
    mantissa, row_shift = scale_multipliers(table["scales"], 1 if table["half_zero"] else 0)
    header = np.zeros((vocab, 4), dtype=np.int16)
    header[:, 0] = mantissa[:, 0].astype(np.uint16).view(np.int16)
    header[:, 1] = row_shift
    header[:, 2] = np.asarray(table["zeros"], dtype=np.int64)[:, 0]
    rows = np.zeros((vocab, embed_stride(hidden)), dtype=np.uint8)
    rows[:, :8] = header.view(np.uint8)
    rows[:, 8:8 + hidden] = codes
    return rows


# ---------------------------------------------------------------- instruction emission


class RoutineEmitter:
    """Emits one routine's instructions in a valid sequential order, with their buffer accesses."""

    def __init__(self, plan: ModelPlan, hardware: HardwareConfig, memory: MemoryPlan, placement: HbmPlacement,
                 routine: str, embed_half_zero: bool):
        self.plan, self.hw, self.m, self.hbm = plan, hardware, memory, placement
        self.routine = routine
        self.rows = memory.chunk if routine == "prefill" else 1
        self.embed_half_zero = embed_half_zero
        self.steps: list[Step] = []
        self.tiles: list[Tile] = []
        self.loaded = 0  # tiles whose LOAD is emitted
        self.tile_index = 0  # tiles whose GEMM is emitted
        ring = self.region(memory.wgt, "tiles")
        self.ring = WeightRing(ring[1], ring[2] - ring[1])
        self.tile_addr: list[int] = []  # buffer address of each loaded tile
        self.norms = norm_names(plan.config.num_layers)
        self.norm_uses = 0  # RMSNORMs emitted
        self.norms_loaded = 0  # norm record LOADs emitted
        self.norms_freed = 0  # norm slots whose RMSNORM is emitted but whose next LOAD is not
        self.stage_uses = 0

    # -- accesses
    def act(self, name: str):
        addr, size = self.m.act.regions[name]
        return (Buffer.ACT, addr, addr + size)

    def region(self, bmap, name: str):
        addr, size = bmap.regions[name]
        return (bmap.buffer, addr, addr + size)

    def add(self, inst: Instruction, reads=(), writes=()) -> None:
        self.steps.append(Step(inst, list(reads), list(writes)))

    def gemm_mode(self, spec: LinearSpec) -> GemmMode:
        prefill = self.routine == "prefill"
        if spec.sparse:
            return GemmMode.GEMM_SPARSE if prefill else GemmMode.GEMV_SPARSE
        return GemmMode.GEMM if prefill else GemmMode.GEMV

    # -- memory instructions
    def memory(self, opcode: Opcode, region: Region, buf: Buffer, buf_addr: int, buf_stride: int,
               row_bytes: int, **fields) -> Instruction:
        striped = region.ports > 1
        flags = fields.pop("flags", 0) | (Flag.STRIPED if striped else 0)
        return Instruction(opcode, pc=region.pc, hbm_offset=region.offset, hbm_stride=region.stride,
                           sub=region.ports if striped else 0, buf=buf, buf_addr=buf_addr, buf_stride=buf_stride,
                           row_bytes=row_bytes, flags=int(flags), **fields)

    def load_tiles(self) -> None:
        """Emit the LOADs of the next tiles, as many as the weight ring has free space for."""
        while self.loaded < len(self.tiles):
            region = self.hbm.regions[tile_region_name(self.tiles[self.loaded])]
            nbytes = region.rows * region.row_bytes  # the LOAD's footprint: chunks padded to 64 bytes
            addr = self.ring.place(nbytes)
            if addr is None:
                return
            inst = self.memory(Opcode.LOAD, region, Buffer.WGT, addr, region.row_bytes, region.row_bytes,
                               rows=region.rows)
            self.add(inst, writes=[(Buffer.WGT, addr, addr + nbytes)])
            self.tile_addr.append(addr)
            self.loaded += 1

    def emit(self) -> list[Step]:
        c = self.plan.config
        for layer in range(c.num_layers):
            for spec in self.plan.layer_linears(layer):
                self.tiles.extend(self.m.tiles(spec))
        self.tiles.extend(self.m.tiles(self.plan.lm_head))
        for _ in range(2):
            self.load_norm()
        self.load_tiles()
        self.embedding()
        rope = self.region(self.m.wgt, "rope")
        region = self.hbm.regions["rope"]
        rows = dict(rows=region.rows) if self.plan.lambda_attention else dict(  # Λ: slot positions 0..S+W-1
            rows_src=RowSource.CONTEXT, start_src=StartSource.HISTORY)  # dense: positions P..P+T-1
        self.add(self.memory(Opcode.LOAD, region, Buffer.WGT, rope[1], 4 * c.head_dim, 4 * c.head_dim, **rows),
                 writes=[rope])
        for layer in range(c.num_layers):
            self.decoder_layer(layer)
        self.rmsnorm("norm.final", "x", "h")
        self.requant("h", "a8_h", c.hidden_size, self.plan.head_act_width)
        self.lm_head()
        self.add(Instruction(Opcode.END))
        return self.steps

    def embedding(self) -> None:
        c = self.plan.config
        ids, emb, x = self.act("ids"), self.act("emb"), self.act("x")
        region = self.hbm.regions["input.ids"]
        self.add(self.memory(Opcode.LOAD, region, Buffer.ACT, ids[1], 4, 4, rows_src=RowSource.TOKENS).replace(
            hbm_stride=4), writes=[ids])
        table = self.hbm.regions["embedding"]
        stride = embed_stride(c.hidden_size)
        self.add(self.memory(Opcode.LOAD_ROWS, table, Buffer.ACT, emb[1], stride, stride,
                             rows_src=RowSource.TOKENS, ids_buf=Buffer.ACT, ids_addr=ids[1]),
                 reads=[ids], writes=[emb])
        self.add(Instruction(Opcode.EMBED, src0_buf=Buffer.ACT, src0_addr=emb[1], dst_buf=Buffer.ACT, dst_addr=x[1],
                             stride=stride, cols=c.hidden_size, rows_src=RowSource.TOKENS,
                             flags=int(Flag.HALF_ZERO) if self.embed_half_zero else 0),
                 reads=[emb], writes=[x])

    def compute(self, opcode: Opcode, dst: str, src0: str, src1: tuple | None, cols: int, **fields) -> None:
        d, s0 = self.act(dst), self.act(src0)
        reads = [s0] + ([src1] if src1 is not None else [])
        inst = Instruction(opcode, dst_buf=Buffer.ACT, dst_addr=d[1], src0_buf=Buffer.ACT, src0_addr=s0[1],
                           src1_buf=src1[0] if src1 else 0, src1_addr=src1[1] if src1 else 0, cols=cols,
                           rows_src=RowSource.TOKENS, **fields)
        self.add(inst, reads=reads, writes=[d])

    def load_norm(self) -> None:
        """LOAD the next norm record into its slot (the two slots alternate)."""
        if self.norms_loaded == len(self.norms):
            return
        slot = self.region(self.m.wgt, f"norm{self.norms_loaded % 2}")
        region = self.hbm.regions[self.norms[self.norms_loaded]]
        self.add(self.memory(Opcode.LOAD, region, Buffer.WGT, slot[1], region.row_bytes, region.row_bytes,
                             rows=region.rows), writes=[slot])
        self.norms_loaded += 1

    def rmsnorm(self, norm_region: str, src: str, dst: str) -> None:
        """RMSNORM with the record loaded two norms earlier; the slot's next record is loaded after
        the following GEMM (gemm), far ahead of its use, so the LOAD unit never waits for a norm."""
        if self.norms[self.norm_uses] != norm_region:
            raise AssertionError(f"norm {norm_region} used out of order")  # a scheduler bug
        slot = self.region(self.m.wgt, f"norm{self.norm_uses % 2}")
        self.norm_uses += 1
        self.compute(Opcode.RMSNORM, dst, src, slot, self.plan.config.hidden_size)
        self.norms_freed += 1

    def requant(self, src: str, dst: str, cols: int, width: ActWidth = ActWidth.A8) -> None:
        self.compute(Opcode.REQUANT, dst, src, None, cols, mode=int(width))

    def linear(self, spec: LinearSpec, a8: str, dst: str, in_width: int) -> None:
        out = self.act(dst)
        for tile in self.m.tiles(spec):
            self.gemm(tile, self.act(a8), a8_stride(in_width), (Buffer.ACT, out[1] + 4 * tile.n0, out[2]),
                      4 * spec.out_features)

    def gemm(self, tile: Tile, a8: tuple, a8_row: int, dst: tuple, dst_stride: int) -> None:
        spec = tile.spec
        addr = self.tile_addr[self.tile_index]
        slot = (Buffer.WGT, addr, addr + tile.shape.nbytes)
        flags = (Flag.ACC_FIRST if tile.first else 0) | (Flag.ACC_LAST if tile.last else 0)
        flags |= Flag.HALF_ZERO if spec.half_zero else 0
        flags |= Flag.A16 if spec.layer is None and self.plan.head_act_width is ActWidth.A16 else 0
        reads, writes = [a8, slot], [dst]
        if not (tile.first and tile.last):
            acc = self.region(self.m.out, "acc")
            reads.append(acc)
            writes.append(acc)
        inst = Instruction(Opcode.GEMM, mode=self.gemm_mode(spec), flags=int(flags), sub=spec.bits,
                           src0_buf=a8[0], src0_addr=a8[1], imm=tile.k0 | (a8_row << 16),
                           src1_buf=Buffer.WGT, src1_addr=slot[1], dst_buf=dst[0], dst_addr=dst[1],
                           stride=dst_stride, cols=tile.n1 - tile.n0, depth=tile.k1 - tile.k0,
                           aux=spec.group_size, rows_src=RowSource.TOKENS)
        self.add(inst, reads=reads, writes=writes)
        self.tile_index += 1
        self.ring.release()
        self.load_tiles()
        for _ in range(self.norms_freed):  # after the tiles: the LOAD unit reaches it once this GEMM is done
            self.load_norm()
        self.norms_freed = 0

    def decoder_layer(self, layer: int) -> None:
        c = self.plan.config
        specs = {s.name: s for s in self.plan.layer_linears(layer)}
        if layer == 0:
            self.kv_load(layer)  # later layers' caches are loaded right after the previous layer's attention
        self.rmsnorm(f"norm.{layer}.input", "x", "h")
        self.requant("h", "a8_h", c.hidden_size)
        for name, dst in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            self.linear(specs[name], "a8_h", dst, c.hidden_size)
        if not self.plan.lambda_attention:  # Λ rotates keys by cache slot inside ATTENTION
            rope = self.region(self.m.wgt, "rope")
            for name, width in (("q", c.q_dim), ("k", c.kv_dim)):
                self.compute(Opcode.ROPE, name, name, rope, width, depth=c.head_dim)
        self.kv_append(layer)
        self.attention()
        # The STOREs follow ATTENTION in program order (they wait for KV_QUANT only), so the next
        # layer's KV LOADs, right after the REQUANT, relay their wait for the STOREs through that
        # REQUANT and not through ATTENTION; the LOAD unit starts them as soon as the KV buffer is
        # free instead of after this layer's o_proj tiles.
        self.kv_transfers(layer, Opcode.STORE)
        self.requant("attn", "a8_attn", c.q_dim)
        if layer + 1 < c.num_layers:
            self.kv_load(layer + 1)
        self.linear(specs["o_proj"], "a8_attn", "o", c.q_dim)
        self.compute(Opcode.ADD, "x", "x", self.act("o"), c.hidden_size)
        self.rmsnorm(f"norm.{layer}.post", "x", "h")
        self.requant("h", "a8_h", c.hidden_size)
        self.linear(specs["gate_proj"], "a8_h", "gate", c.hidden_size)
        self.linear(specs["up_proj"], "a8_h", "up", c.hidden_size)
        self.compute(Opcode.SILU_MUL, "gate", "gate", self.act("up"), c.intermediate_size)
        self.requant("gate", "a8_mlp", c.intermediate_size)
        self.linear(specs["down_proj"], "a8_mlp", "o", c.intermediate_size)
        self.compute(Opcode.ADD, "x", "x", self.act("o"), c.hidden_size)

    # -- KV cache
    def streams(self):
        return (("keys", self.m.keys, "k"), ("values", self.m.values, "v"))

    def kv_transfers(self, layer: int, opcode: Opcode) -> None:
        for stream, lay, _ in self.streams():
            base = self.region(self.m.kv, stream)
            if isinstance(lay, LambdaStreamLayout):
                for section in lay.moved_sections():
                    self.lambda_transfer(opcode, layer, stream, base[1], section)
                continue
            shift = lay.block_tokens.bit_length() - 1 if lay.mode is KvMode.KV4_CHANNEL else 0
            offsets = {"codes": lay.codes_offset, "stats": lay.stats_offset, "staging": lay.staging_offset}
            for section, _, row_bytes in kv_sections(lay):
                region = self.hbm.regions[kv_region_name(layer, stream, section)]
                addr = base[1] + offsets[section]
                if section == "staging":
                    fields = dict(rows=region.rows)
                    row_bytes = region.row_bytes
                elif opcode is Opcode.LOAD:
                    fields = dict(rows_src=RowSource.HISTORY, block_shift=shift, flags=Flag.BUF_AT_START)
                else:
                    fields = dict(rows_src=RowSource.CONTEXT, start_src=StartSource.HISTORY, block_shift=shift,
                                  flags=Flag.BUF_AT_START)
                inst = self.memory(opcode, region, Buffer.KV, addr, row_bytes, row_bytes, **fields)
                if opcode is Opcode.LOAD:
                    self.add(inst, writes=[base])
                else:
                    self.add(inst, reads=[base])

    def lambda_transfer(self, opcode: Opcode, layer: int, stream: str, base: int, section: MovedSection) -> None:
        """LOAD or STORE of one part of a Λ stream region: the slots the run changes (STORE) or still
        reads (LOAD), as RING row ranges that follow the ring slots of the positions (docs/isa.md)."""
        region = self.hbm.regions[kv_region_name(layer, stream, section.name)]
        addr = base + section.offset
        span = (Buffer.KV, addr, addr + section.nbytes)
        if section.kind == "whole":
            fields = dict(rows=region.rows)
        else:
            if section.ring and section.slots > MAX_ROWS:
                raise BufferPlanError(f"Λ cache part {section.name} has {section.slots:,} ring slots; a RING transfer "
                                      f"addresses at most {MAX_ROWS:,}: use a smaller attention window")
            fields = dict(flags=Flag.RING | Flag.BUF_AT_START, rows=section.slots if section.ring else 0,
                          ring_part=int(section.part), block_shift=section.shift,
                          split_shift=(region.rows // section.slots).bit_length() - 1)
            if opcode is Opcode.STORE:  # the run's own tokens, or the blocks they complete
                fields.update(start_src=StartSource.HISTORY, rows_src=RowSource.CONTEXT)
            else:  # what the run's first query still reads, or the unfinished block's staged tokens
                start = StartSource.HISTORY if section.kind == "raw" else (
                    StartSource.ZERO if section.part is RingPart.SINKS else StartSource.WINDOW)
                fields.update(start_src=start, rows_src=RowSource.HISTORY, align_shift=section.align)
        inst = self.memory(opcode, region, Buffer.KV, addr, region.row_bytes, region.row_bytes, **fields)
        if opcode is Opcode.LOAD:
            self.add(inst, writes=[span])
        else:
            self.add(inst, reads=[span])

    def kv_load(self, layer: int) -> None:
        self.kv_transfers(layer, Opcode.LOAD)

    def kv_append(self, layer: int) -> None:
        c = self.plan.config
        for stream, lay, src in self.streams():
            base = self.region(self.m.kv, stream)
            s = self.act(src)
            self.add(Instruction(Opcode.KV_QUANT, mode=lay.mode, flags=self.kv_flags(), src0_buf=Buffer.ACT, src0_addr=s[1], dst_buf=Buffer.KV,
                                 dst_addr=base[1], cols=c.kv_dim, depth=c.head_dim, aux=lay.block_tokens,
                                 imm=self.kv_capacity(), rows_src=RowSource.TOKENS), reads=[s, base], writes=[base])

    def kv_flags(self) -> int:
        return (int(Flag.KV8) if self.plan.kv_bits == 8 else 0) | (int(Flag.LAMBDA) if self.plan.lambda_attention else 0)

    def kv_capacity(self) -> int:
        """imm of KV_QUANT/ATTENTION: the dense streams' slots; under Λ, ATTENTION's RoPE table address."""
        return 0 if self.plan.lambda_attention else self.m.keys.capacity

    def attention(self) -> None:
        c = self.plan.config
        keys, values = self.region(self.m.kv, "keys"), self.region(self.m.kv, "values")
        q, out = self.act("q"), self.act("attn")
        rope = self.region(self.m.wgt, "rope")
        imm = rope[1] if self.plan.lambda_attention else self.m.keys.capacity
        mode = int(self.m.keys.mode) | int(self.m.values.mode) << 2
        self.add(Instruction(Opcode.ATTENTION, mode=mode, flags=self.kv_flags(), src0_buf=Buffer.ACT, src0_addr=q[1], src1_buf=Buffer.KV,
                             src1_addr=keys[1], stride=values[1], dst_buf=Buffer.ACT, dst_addr=out[1], cols=c.q_dim,
                             depth=c.head_dim, sub=c.num_kv_heads, aux=self.m.keys.block_tokens,
                             imm=imm, rows_src=RowSource.TOKENS),
                 reads=[q, keys, values] + ([rope] if self.plan.lambda_attention else []), writes=[out])

    def lm_head(self) -> None:
        c = self.plan.config
        logits = self.hbm.regions["output.logits"]
        head_row = act_row_stride(c.hidden_size, self.plan.head_act_width)  # A8 or A16 rows
        for tile in self.m.tiles(self.plan.lm_head):
            stage = self.region(self.m.out, f"stage{self.stage_uses % 2}")
            self.stage_uses += 1
            width = tile.n1 - tile.n0
            self.gemm(tile, self.act("a8_h"), head_row, stage, 4 * width)
            if tile.last:
                store = self.memory(Opcode.STORE, logits, Buffer.OUT, stage[1], 4 * width, 4 * width,
                                    rows_src=RowSource.TOKENS).replace(hbm_offset=logits.offset + 4 * tile.n0)
                self.add(store, reads=[stage])


# ---------------------------------------------------------------- report


def build_report(compiled: Compiled) -> dict:
    """What the scheduler chose: modes, tiles, buffer use, bytes per pseudo-channel, instruction counts."""
    m, plan = compiled.memory, compiled.plan
    modes = {}
    for routine in ROUTINES:
        prefill = routine == "prefill"
        sparse = plan.recipe.sparse
        linear_mode = (GemmMode.GEMM_SPARSE if sparse else GemmMode.GEMM) if prefill else (
            GemmMode.GEMV_SPARSE if sparse else GemmMode.GEMV)
        head_mode = GemmMode.GEMM if prefill else GemmMode.GEMV
        modes[routine] = {"decoder linears": linear_mode.name, "lm_head": head_mode.name,
                          "attention": f"ATTENTION keys {kv_name(m.keys)}, values {kv_name(m.values)}"}
    tiles = {name: {"n_tile": t.n_tile, "k_tile": t.k_tile, "tiles": len(t.tiles),
                    "tile_bytes": max(x.shape.nbytes for x in t.tiles), "k_split": t.k_split}
             for name, t in m.tilings.items()}
    counts = {}
    for routine, entry in compiled.entries.items():
        chunk = compiled.instructions[entry["entry"]:entry["entry"] + entry["count"]]
        counts[routine] = dict(sorted(Counter(i.opcode.name for i in chunk).items()))
    kinds = Counter()
    for region in compiled.placement.regions.values():
        kinds[region.kind] += -(-region.rows // region.ports) * region.stride * region.ports
    return {
        "chunk_tokens": m.chunk,
        "max_context": m.max_context,
        "lambda": {"sinks": plan.recipe.sinks, "window": plan.recipe.window} if plan.lambda_attention else None,
        "modes": modes,
        "tiles": tiles,
        "buffers": {b.buffer.name: {"used": b.used, "capacity": b.capacity} for b in m.maps()},
        "hbm_bytes_per_pc": compiled.placement.bytes_per_pc(),
        "hbm_bytes_by_kind": dict(kinds),
        "instructions": counts,
    }


def kv_name(lay: KvStreamLayout) -> str:
    return {KvMode.ACT32: "ACT32", KvMode.KV4_TOKEN: f"KV{lay.bits} per token",
            KvMode.KV4_CHANNEL: f"KV{lay.bits} per channel (blocks of {lay.block_tokens})"}[lay.mode]


def format_report(report: dict) -> str:
    """The report as text for the CLI."""
    context = (f"dense context up to {report['max_context']} positions" if report["max_context"] is not None
               else f"Λ attention, {report['lambda']['sinks']} sinks + window {report['lambda']['window']}, any context")
    lines = [f"prefill chunk C = {report['chunk_tokens']} tokens; {context}"]
    for routine, modes in report["modes"].items():
        lines.append(f"{routine}: " + "; ".join(f"{k} {v}" for k, v in modes.items()))
    lines.append("weight tiles (N x K per tile, tiles per layer, bytes per tile):")
    for name, t in report["tiles"].items():
        split = ", K split" if t["k_split"] else ""
        lines.append(f"  {name:<10} {t['n_tile']:>6} x {t['k_tile']:<6} {t['tiles']:>4} tiles  {t['tile_bytes']:>10,} B{split}")
    lines.append("on-chip buffers:")
    for name, b in report["buffers"].items():
        lines.append(f"  {name:<4} {b['used']:>10,} of {b['capacity']:>10,} bytes ({b['used'] / b['capacity']:.0%})")
    per_pc = report["hbm_bytes_per_pc"]
    lines.append(f"HBM: {sum(per_pc):,} bytes over {len(per_pc)} pseudo-channels, "
                 f"{min(per_pc):,} .. {max(per_pc):,} per pseudo-channel")
    lines.append("  by kind: " + ", ".join(f"{k} {v:,}" for k, v in report["hbm_bytes_by_kind"].items()))
    for routine, counts in report["instructions"].items():
        total = sum(counts.values())
        lines.append(f"{routine}: {total} instructions (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    return "\n".join(lines)
