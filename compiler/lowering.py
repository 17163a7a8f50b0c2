"""Lowering of a compressed model (fake-quant `LlamaModel` + `Recipe`) to Einsum cascades.

One cascade per decoder layer and phase (prefill of T tokens, or one decode step after T tokens),
plus the embedding lookup and the LM head. Every tensor carries its storage format; the numerics
of the fake-quant model (A8 rounding, group-wise dequantization, 2:4 masks) are explicit Einsums,
so the reference interpreter reproduces the model's logits. docs/ir.md, "Lowering", describes the
mapping op by op.

The KV cache is the cascade's one external edge: a layer outputs the new tokens' keys and values
(KNEW, VNEW, float32) for the cache unit, which stores them in the cache format (KV4 codes with
float16 scale/offset, per-channel blocks staged in float16 — a storage conversion the IR does
not model), and attention reads every key it sees, the new ones included, from the cache inputs
KC/VC. Dense attention caches keys after RoPE; the Λ cache (S sinks + W window slots) caches them
before RoPE and the cascade rotates them by slot position (StreamingLLM).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmfab.compiler.formats import FLOAT32, Format, FormatKind
from llmfab.compiler.ir import Affine, Cascade, CmpOp, Comparison, Condition, lambda_filter, prefix_filter, window_filter
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.lowering_attention import AttentionPlan, Softmax, emit_attention, emit_rope, largest_block
from llmfab.compiler.lowering_linear import (
    GroupedInput,
    LinearLayout,
    RankDim,
    WeightFormat,
    emit_act_quant,
    emit_rms_norm,
    group_input,
)
from llmfab.compiler.lowering_text import CascadeText
from llmfab.quant.kv4 import KvGranularity
from llmfab.quant.model import projection

KV4_BLOCK_TOKENS = 32  # per-channel key blocks of the KV4 caches (quant/kv_cache_4bit.py)


class Phase(enum.Enum):
    PREFILL = "prefill"  # T tokens of a prompt, from an empty cache
    DECODE = "decode"  # one token after T tokens


@dataclass(frozen=True)
class LoweringOptions:
    """`tokens`: prefill length T, or for decode the tokens already in the stream (the new token is
    at stream position T). `block`: keys per block of the 1-pass softmax (the largest divisor of the
    key count not above it is used)."""

    phase: Phase = Phase.DECODE
    tokens: int = 16
    softmax: Softmax = Softmax.ONE_PASS
    block: int = 8

    def __post_init__(self) -> None:
        if self.tokens < (1 if self.phase is Phase.PREFILL else 0):
            raise IRError(f"lowering: {self.tokens} tokens is not a valid {self.phase.value} length")
        if self.block < 1:
            raise IRError(f"lowering: the softmax block must be at least 1 key, got {self.block}")


@dataclass(frozen=True)
class PositionTables:
    """Positions whose RoPE cos/sin the position inputs hold (None: that table is not used)."""

    queries: tuple[int, ...]  # COSQ/SINQ [EI, P]: queries and, under dense attention, the new keys
    keys: tuple[int, ...] | None  # COSK/SINK [EI, keys]: cached keys (Λ: stream or slot positions)
    sinks: tuple[int, ...] | None  # COSS/SINS [EI, P]: queries facing the sinks, min(p, S + W - 1)


@dataclass(frozen=True)
class LoweredLayer:
    layer: int
    options: LoweringOptions
    cascade: Cascade
    linears: tuple[tuple[str, LinearLayout], ...]  # projection name -> layout
    attention: AttentionPlan
    positions: PositionTables


@dataclass(frozen=True)
class LoweredEnds:
    """Embedding lookup (token one-hot -> X) or LM head (X -> LOGITS), with its weight layout."""

    cascade: Cascade
    table: LinearLayout


PROJECTIONS = {  # projection -> (weight tensor prefix, output tensor)
    "q_proj": ("WQ", "Q"), "k_proj": ("WK", "K"), "v_proj": ("WV", "VNEW"), "o_proj": ("WO", "O"),
    "gate_proj": ("WGT", "GT"), "up_proj": ("WUP", "UP"), "down_proj": ("WDN", "DN"),
}


def kv_formats(recipe) -> tuple[Format, Format]:
    """Storage formats of cached keys and values: KV4 per the recipe, else float (KV8 has no
    packed cache yet and runs in float, as in quant/recipe_runtime.py)."""
    if recipe.kv_bits != 4:
        return FLOAT32, FLOAT32

    def fmt(granularity: KvGranularity) -> Format:
        if granularity is KvGranularity.PER_CHANNEL:
            block = min(KV4_BLOCK_TOKENS, recipe.window) if recipe.lambda_attention else KV4_BLOCK_TOKENS
            return Format.make(FormatKind.KV, 4, scale="channel", group=block)
        return Format.make(FormatKind.KV, 4, scale="token")

    return fmt(recipe.kv_key_granularity), fmt(recipe.kv_value_granularity)


def attention_shape(config, recipe, options: LoweringOptions) -> tuple[AttentionPlan, PositionTables]:
    """Keys, filters and position tables of one layer's attention for the phase."""
    t = options.tokens
    decode = options.phase is Phase.DECODE
    queries = 1 if decode else t
    lam = recipe.lambda_attention
    sinks, window = (recipe.sinks, recipe.window) if lam else (0, 0)
    sink_filter = None
    if not lam:
        keys = t + 1 if decode else t
        where = None if decode else prefix_filter("m", "p")
        tables = PositionTables((t,) if decode else tuple(range(t)), None, None)
    elif decode:
        keys = min(t + 1, sinks + window)  # filled Λ slots; the new token is the last one
        where = lambda_filter("m", "p", sinks, window).substitute("p", Affine((("p", 1),), keys - 1))
        tables = PositionTables((keys - 1,), tuple(range(keys)), None)
    else:
        keys = t
        capped = tuple(min(p, sinks + window - 1) for p in range(t))
        if t <= sinks + window or sinks == 0:
            where = lambda_filter("m", "p", sinks, window) if sinks else window_filter("m", "p", window)
            tables = PositionTables(tuple(range(t)), tuple(range(t)), None)
        else:
            where = window_filter("m", "p", window)
            sink_filter = Condition(((Comparison(Affine.var("m"), CmpOp.LT, Affine.const(sinks)),
                                      Comparison(Affine.var("m"), CmpOp.LE, Affine((("p", 1),), -window))),))
            tables = PositionTables(tuple(range(t)), tuple(range(t)), capped)
    key_format, value_format = kv_formats(recipe)
    softmax = options.softmax
    plan = AttentionPlan(
        kv_heads=config.num_kv_heads, group=config.num_heads // config.num_kv_heads, head_dim=config.head_dim,
        queries=queries, keys=keys, softmax=softmax,
        block=largest_block(keys, options.block) if softmax is Softmax.ONE_PASS else 1,
        window_filter=where, sink_filter=sink_filter, cache_rotated=not lam,
        key_format=key_format, value_format=value_format,
    )
    return plan, tables


def _linear_layouts(model, layer: int) -> dict[str, LinearLayout]:
    config = model.config
    block = model.model.layers[layer]
    kv, group, half, dim = config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim // 2, config.head_dim
    hidden, inter = RankDim("H", config.hidden_size), RankDim("N", config.intermediate_size)
    g, r, eh, ei, f = RankDim("G", kv), RankDim("R", group), RankDim("EH", 2), RankDim("EI", half), RankDim("F", dim)
    sources = {"o_proj": (g, r, f), "down_proj": (inter,)}
    outputs = {"q_proj": (g, r, eh, ei), "k_proj": (g, eh, ei), "v_proj": (g, f), "o_proj": (hidden,),
               "gate_proj": (inter,), "up_proj": (inter,), "down_proj": (hidden,)}
    layouts = {}
    for name, (weight, output) in PROJECTIONS.items():
        module = projection(block, name)
        fmt = WeightFormat.of(module)
        grouped = group_input(sources.get(name, (hidden,)), fmt.group_size)
        layouts[name] = LinearLayout(weight, output, grouped, outputs[name], fmt)
    return layouts


def lower_layer(model, recipe, layer: int, options: LoweringOptions = LoweringOptions()) -> LoweredLayer:
    """The cascade of decoder layer `layer`: X[H, P] (+ caches, positions, weights) -> Y[H, P]."""
    config = model.config
    if not 0 <= layer < config.num_layers:
        raise IRError(f"lowering: layer {layer} does not exist; the model has layers 0..{config.num_layers - 1}")
    plan, tables = attention_shape(config, recipe, options)
    layouts = _linear_layouts(model, layer)
    lam = recipe.lambda_attention
    if lam:  # Λ caches keys before RoPE: the projection output is what the cache unit stores
        layouts["k_proj"] = LinearLayout("WK", "KNEW", layouts["k_proj"].grouped, layouts["k_proj"].out,
                                         layouts["k_proj"].fmt)
    hidden = RankDim("H", config.hidden_size)
    text = CascadeText()
    text.rank("P", plan.queries)
    text.tensor("X", ["H", "P"], FLOAT32)
    eps = config.rms_norm_eps
    emit_rms_norm(text, "N1", "X", "G1", "XN", hidden, eps)
    xc = emit_act_quant(text, "X", "XN", (hidden,), layouts["q_proj"].fmt.act_bits)
    for name in ("q_proj", "k_proj", "v_proj"):
        layouts[name].emit(text, xc)
    text.tensor("COSQ", ["EI", "P"], FLOAT32)
    text.tensor("SINQ", ["EI", "P"], FLOAT32)
    emit_rope(text, "QR", "Q", ("G", "R"), ("P",), "COSQ", "SINQ")
    if plan.sink_filter is not None:
        text.tensor("COSS", ["EI", "P"], FLOAT32)
        text.tensor("SINS", ["EI", "P"], FLOAT32)
        emit_rope(text, "QS", "Q", ("G", "R"), ("P",), "COSS", "SINS")
    if not lam:
        emit_rope(text, "KNEW", "K", ("G",), ("P",), "COSQ", "SINQ")
    attention = emit_attention(text, plan)
    heads = (RankDim("F", config.head_dim), RankDim("G", plan.kv_heads), RankDim("R", plan.group))
    ac = emit_act_quant(text, "A", attention, heads, layouts["o_proj"].fmt.act_bits)
    layouts["o_proj"].emit(text, ac)
    text.tensor("H1", ["H", "P"], FLOAT32)
    text.add("H1[h, p] = X[h, p] + O[h, p]")
    emit_rms_norm(text, "N2", "H1", "G2", "HN", hidden, eps)
    hc = emit_act_quant(text, "H", "HN", (hidden,), layouts["gate_proj"].fmt.act_bits)
    layouts["gate_proj"].emit(text, hc)
    layouts["up_proj"].emit(text, hc)
    text.tensor("SW", ["N", "P"], FLOAT32)
    text.add("SW[n, p] = GT[n, p] * sigmoid(GT[n, p]) * UP[n, p]")
    sc = emit_act_quant(text, "S", "SW", (RankDim("N", config.intermediate_size),),
                        layouts["down_proj"].fmt.act_bits)
    layouts["down_proj"].emit(text, sc)
    text.tensor("Y", ["H", "P"], FLOAT32)
    text.add("Y[h, p] = H1[h, p] + DN[h, p]")
    source = f"layer {layer} {options.phase.value} T={options.tokens}"
    return LoweredLayer(layer, options, text.cascade(source), tuple(layouts.items()), plan, tables)


def lower_embedding(model, tokens: int) -> LoweredEnds:
    """X[H, P] = the dequantized table rows picked by the token one-hot TOK[V, P] (right-nonzero merge)."""
    config = model.config
    embed = model.model.embed_tokens
    fmt = WeightFormat.of(embed)
    vocab, hidden = RankDim("V", config.vocab_size), RankDim("H", config.hidden_size)
    layout = LinearLayout("WE", "X", GroupedInput((hidden,), (), (hidden,), (("H", "h"),)), (vocab,), fmt)
    text = CascadeText()
    for dim in (vocab, hidden, RankDim("P", tokens)):
        text.rank(dim.name, dim.size)
    index_bits = next(b for b in (8, 16, 32) if config.vocab_size <= 1 << b)
    text.tensor("TOK", ["V", "P"], Format.make(FormatKind.INDEX, index_bits, select="onehot"))
    text.tensor("WEC", ["H", "V"], fmt.codes_format())
    text.tensor("WEZ", ["V"], Format.make(FormatKind.INT, fmt.zero_bits))
    text.tensor("WES", ["V"], Format.make(FormatKind.FLOAT, 16))
    text.tensor("X", ["H", "P"], FLOAT32)
    code = "WEC[h, v] * 2.0" if fmt.zero_halves else "WEC[h, v]"
    half = " * 0.5" if fmt.zero_halves else ""
    text.add(f"X[h, p] = (({code} - WEZ[v]) * WES[v]{half}) *{{right}} TOK[v, p] reduce v: sum")
    return LoweredEnds(text.cascade("embedding"), layout)


def lower_head(model, tokens: int) -> LoweredEnds:
    """LOGITS[V, P] = LM head(A8(RMSNorm(X))) with the final norm gain GF."""
    config = model.config
    head = model.lm_head
    fmt = WeightFormat.of(head)
    hidden = RankDim("H", config.hidden_size)
    layout = LinearLayout("WLM", "LOGITS", group_input((hidden,), fmt.group_size),
                          (RankDim("V", config.vocab_size),), fmt)
    text = CascadeText()
    text.rank("P", tokens)
    text.tensor("X", ["H", "P"], FLOAT32)
    emit_rms_norm(text, "NF", "X", "GF", "XN", hidden, config.rms_norm_eps)
    layout.emit(text, emit_act_quant(text, "X", "XN", (hidden,), fmt.act_bits))
    return LoweredEnds(text.cascade("lm head"), layout)
