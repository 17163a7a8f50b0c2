"""On-chip buffer maps and weight tiling: where every tensor of a routine sits in the WGT, ACT, KV
and OUT buffers, how big the prefill chunk C can be, and how each linear is cut into tiles that
fit a fraction of the weight buffer's tile ring (the rest holds the tiles loaded ahead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import ActWidth, Buffer, KvMode
from llmfab.compiler.kv_layout import KvStreamLayout, LambdaStreamLayout
from llmfab.compiler.model_plan import LinearSpec, ModelPlan
from llmfab.compiler.placement import chunk_shape
from llmfab.compiler.weight_tiles import TileShape, align
from llmfab.errors import InputError

NORM_HEADER_BYTES = 24
EMBED_HEADER_BYTES = 8
A8_HEADER_BYTES = 8
MAX_ROWS = (1 << 16) - 1  # 16-bit row fields
# The largest weight tile is 1/TILES_IN_FLIGHT of the weight buffer's tile ring (compiler/weight_ring.py),
# so the LOAD unit can be that many tiles ahead of the GEMMs (through attention, norms, requantization).
TILES_IN_FLIGHT = 6


class BufferPlanError(InputError):
    """The engine's buffers are too small for the model."""


def a8_stride(n: int) -> int:
    """Bytes per A8 row of n codes: 8-byte scale header plus the codes, padded to 8."""
    return A8_HEADER_BYTES + align(n, 8)


def act_row_stride(n: int, width: ActWidth) -> int:
    """Bytes per A8 or A16 row of n codes: the 8-byte scale header plus n int8 or int16 codes,
    padded to 8 (A16: the LM head's input with head_act_bits 16)."""
    return A8_HEADER_BYTES + align(n * width.bits // 8, 8)


def embed_stride(hidden: int) -> int:
    return EMBED_HEADER_BYTES + align(hidden, 8)


def norm_bytes(n: int) -> int:
    return NORM_HEADER_BYTES + 4 * n


@dataclass
class BufferMap:
    """Named regions of one on-chip buffer, bump-allocated at 64-byte alignment."""

    buffer: Buffer
    capacity: int
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)
    used: int = 0

    def take(self, name: str, nbytes: int) -> int:
        addr = self.used
        self.used = align(addr + nbytes)
        self.regions[name] = (addr, nbytes)
        return addr

    def fits(self) -> bool:
        return self.used <= self.capacity

    def addr(self, name: str) -> int:
        return self.regions[name][0]

    def to_dict(self) -> dict:
        return {"capacity": self.capacity, "used": self.used,
                "regions": {k: {"addr": a, "bytes": b} for k, (a, b) in self.regions.items()}}


@dataclass(frozen=True)
class Tile:
    """Rows n0..n1 and input columns k0..k1 of a linear."""

    spec: LinearSpec
    index: int
    n0: int
    n1: int
    k0: int
    k1: int

    @property
    def shape(self) -> TileShape:
        s = self.spec
        return TileShape(self.n1 - self.n0, self.k1 - self.k0, s.group_size, s.bits, s.sparse, s.half_zero)

    @property
    def name(self) -> str:
        return f"{self.spec.label}.tile{self.index}"

    @property
    def first(self) -> bool:
        return self.k0 == 0

    @property
    def last(self) -> bool:
        return self.k1 == self.spec.in_features


@dataclass(frozen=True)
class Tiling:
    spec: LinearSpec
    n_tile: int
    k_tile: int
    tiles: tuple[Tile, ...]

    @property
    def k_split(self) -> bool:
        return self.k_tile < self.spec.in_features


def tile_linear(spec: LinearSpec, slot_bytes: int, max_rows_out: int) -> Tiling:
    """Tiles of at most ``slot_bytes``; N tiles of equal size, K cut at group boundaries only if
    one output row of the whole input does not fit. ``max_rows_out`` caps N (output staging)."""
    g = spec.group_size

    def nbytes(n: int, k: int) -> int:
        return TileShape(n, k, g, spec.bits, spec.sparse, spec.half_zero).nbytes

    k_tile = spec.in_features
    while nbytes(1, k_tile) > slot_bytes:
        groups = k_tile // g
        if groups <= 1:
            raise BufferPlanError(
                f"{spec.label}: one row of one group ({g} inputs) needs {nbytes(1, g):,} bytes, more than the "
                f"largest weight tile ({slot_bytes:,} bytes, 1/{TILES_IN_FLIGHT} of the weight buffer's tile ring); "
                "use an engine with a larger weight buffer")
        k_tile = (groups // 2 + groups % 2) * g if groups > 2 else g
    n_max = min(spec.out_features, max_rows_out, MAX_ROWS)
    lo, hi = 1, n_max
    while lo < hi:  # largest n with a fitting tile
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if nbytes(mid, k_tile) <= slot_bytes else (lo, mid - 1)
    count = -(-spec.out_features // lo)
    n_tile = -(-spec.out_features // count)
    tiles = []
    for n0 in range(0, spec.out_features, n_tile):
        for k0 in range(0, spec.in_features, k_tile):
            tiles.append(Tile(spec, len(tiles), n0, min(n0 + n_tile, spec.out_features), k0,
                              min(k0 + k_tile, spec.in_features)))
    return Tiling(spec, n_tile, k_tile, tuple(tiles))


ACT_TENSORS = ("x", "h", "q", "attn", "o")  # ACT32 tensors of width hidden or q_dim


@dataclass
class MemoryPlan:
    """Buffer maps shared by both routines (laid out for the prefill chunk C) and the tilings."""

    chunk: int
    max_context: int | None  # dense: positions the KV buffer holds; None under Λ (unbounded)
    wgt: BufferMap
    act: BufferMap
    kv: BufferMap
    out: BufferMap
    keys: KvStreamLayout | LambdaStreamLayout
    values: KvStreamLayout | LambdaStreamLayout
    tilings: dict[str, Tiling]
    slot_bytes: int
    stage_bytes: int
    acc_bytes: int

    @property
    def rope_rows(self) -> int:
        """Rows of the RoPE table: every position (dense) or the S + W slot positions (Λ)."""
        if isinstance(self.keys, LambdaStreamLayout):
            return self.keys.sinks + self.keys.window
        return self.max_context

    def maps(self) -> list[BufferMap]:
        return [self.wgt, self.act, self.kv, self.out]

    def tiles(self, spec: LinearSpec) -> list[Tile]:
        """The tiles of ``spec`` (every decoder layer is cut like layer 0)."""
        tiling = self.tilings[spec.name]
        return [Tile(spec, t.index, t.n0, t.n1, t.k0, t.k1) for t in tiling.tiles]


def act_map(plan: ModelPlan, rows: int, capacity: int) -> BufferMap:
    c = plan.config
    m = BufferMap(Buffer.ACT, capacity)
    m.take("ids", 4 * rows)
    m.take("emb", rows * embed_stride(c.hidden_size))
    for name, width in (("x", c.hidden_size), ("h", c.hidden_size), ("o", c.hidden_size), ("q", c.q_dim),
                        ("k", c.kv_dim), ("v", c.kv_dim), ("attn", c.q_dim),
                        ("gate", c.intermediate_size), ("up", c.intermediate_size)):
        m.take(name, 4 * rows * width)
    m.take("a8_h", rows * act_row_stride(c.hidden_size, plan.head_act_width))  # also the LM head's A16 rows
    for name, width in (("a8_attn", c.q_dim), ("a8_mlp", c.intermediate_size)):
        m.take(name, rows * a8_stride(width))
    return m


def kv_capacity(plan: ModelPlan, kv_bytes: int) -> int:
    """Largest context whose key and value streams both fit the KV buffer (dense attention keeps
    every position), capped by the model's trained context, a multiple of the KV block."""
    c, block = plan.config, plan.block_tokens

    def size(capacity: int) -> int:
        return sum(KvStreamLayout(m, capacity, c.num_kv_heads, c.head_dim, block, plan.kv_bits).nbytes
                   for m in (plan.key_mode, plan.value_mode))

    hi = c.max_position_embeddings // block * block
    if size(hi) <= kv_bytes:
        return hi
    lo = 0
    while hi - lo > block:
        mid = (lo + hi) // 2 // block * block
        lo, hi = (mid, hi) if size(mid) <= kv_bytes else (lo, mid)
    if lo < block:
        raise BufferPlanError(f"the KV buffer ({kv_bytes:,} bytes) cannot hold even {block} positions of one "
                              "layer's keys and values; use an engine with a larger kv_buffer_bytes")
    return lo


def plan_memory(plan: ModelPlan, hardware: HardwareConfig) -> MemoryPlan:
    """Choose C (the largest chunk whose buffers fit), the KV capacity and the tilings."""
    e, c = hardware.engine, plan.config
    if plan.block_tokens & (plan.block_tokens - 1):
        raise BufferPlanError(f"KV blocks of {plan.block_tokens} tokens: the engine addresses blocks by shifts, "
                              "so the block must be a power of two")
    capacity = None if plan.lambda_attention else kv_capacity(plan, e.kv_buffer_bytes)
    if plan.lambda_attention:
        _check_lambda_kv(plan, e.kv_buffer_bytes)
    per_row = act_map(plan, 1, e.activation_buffer_bytes).used
    chunk = min(e.activation_buffer_bytes // max(per_row, 1) + 1, capacity or MAX_ROWS, MAX_ROWS)
    while chunk >= 1:
        memory = _try_plan(plan, hardware, chunk, capacity)
        if memory is not None:
            return memory
        chunk -= 1
    raise BufferPlanError(
        f"not even one token fits the engine's buffers: one token of {plan.name or 'the model'} needs {per_row:,} "
        f"bytes of activations (buffer {e.activation_buffer_bytes:,}); use an engine with larger buffers")


def _check_lambda_kv(plan: ModelPlan, kv_bytes: int) -> None:
    """A Λ layer's key and value regions (for one-token chunks, the smallest) must fit the KV buffer."""
    keys, values = kv_layouts(plan, 1, None)
    need = keys.nbytes + values.nbytes
    if need > kv_bytes:
        r = plan.recipe
        raise BufferPlanError(
            f"one layer's Λ KV cache ({r.sinks} sinks + window {r.window}: keys {keys.nbytes:,} + values "
            f"{values.nbytes:,} = {need:,} bytes, even with 1-token prefill chunks) does not fit the KV buffer "
            f"({kv_bytes:,} bytes); use an engine with kv_buffer_bytes >= {need:,} (e.g. --engine u280-accllm) "
            "or a recipe with a smaller attention window")


def kv_layouts(plan: ModelPlan, chunk: int, capacity: int | None):
    """Key and value stream layouts: dense with ``capacity`` positions, or Λ for chunks of ``chunk``."""
    c, r = plan.config, plan.recipe
    out = []
    for mode in (plan.key_mode, plan.value_mode):
        if plan.lambda_attention:
            out.append(LambdaStreamLayout(mode, r.sinks, r.window, chunk, c.num_kv_heads, c.head_dim,
                                          plan.block_tokens, plan.kv_bits))
        else:
            out.append(KvStreamLayout(mode, capacity, c.num_kv_heads, c.head_dim, plan.block_tokens, plan.kv_bits))
    return out


def _try_plan(plan: ModelPlan, hardware: HardwareConfig, chunk: int, capacity: int | None) -> MemoryPlan | None:
    e, c = hardware.engine, plan.config
    act = act_map(plan, chunk, e.activation_buffer_bytes)
    if not act.fits():
        return None
    wgt = BufferMap(Buffer.WGT, e.weight_buffer_bytes)
    ports = min(e.hbm_ports, hardware.board.hbm.pseudo_channels)
    pieces, piece = chunk_shape(norm_bytes(c.hidden_size), ports)  # a norm record streams from every port
    for slot in range(2):
        wgt.take(f"norm{slot}", pieces * piece)
    rope_rows = plan.recipe.sinks + plan.recipe.window if plan.lambda_attention else chunk
    wgt.take("rope", rope_rows * 4 * c.head_dim)
    ring_bytes = (e.weight_buffer_bytes - wgt.used) // 64 * 64
    slot_bytes = ring_bytes // TILES_IN_FLIGHT // 64 * 64
    if slot_bytes <= 0:
        return None
    wgt.take("tiles", ring_bytes)
    stage_bytes = e.output_buffer_bytes // 2 // 64 * 64
    if stage_bytes < 4 * chunk:
        return None
    tilings = {}
    for spec in plan.layer_linears(0):
        tilings[spec.name] = tile_linear(spec, slot_bytes, MAX_ROWS)
    tilings["lm_head"] = tile_linear(plan.lm_head, slot_bytes, stage_bytes // (4 * chunk))
    acc_bytes = max((8 * chunk * t.n_tile for t in tilings.values() if t.k_split), default=0)
    out = BufferMap(Buffer.OUT, e.output_buffer_bytes)
    if acc_bytes:
        out.take("acc", acc_bytes)
        stage_bytes = (e.output_buffer_bytes - out.used) // 2 // 64 * 64
        if stage_bytes < 4 * chunk * tilings["lm_head"].n_tile:
            return None
    out.take("stage0", stage_bytes)
    out.take("stage1", stage_bytes)
    if not out.fits():
        return None
    keys, values = kv_layouts(plan, chunk, capacity)
    kv = BufferMap(Buffer.KV, e.kv_buffer_bytes)
    kv.take("keys", keys.nbytes)
    kv.take("values", values.nbytes)
    if not kv.fits():
        return None
    return MemoryPlan(chunk, capacity, wgt, act, kv, out, keys, values, tilings, slot_bytes, stage_bytes, acc_bytes)


def is_kv4(mode: KvMode) -> bool:
    return mode is not KvMode.ACT32
