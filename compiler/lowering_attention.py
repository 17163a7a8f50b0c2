"""Lowering of a decoder layer's attention: RoPE, GQA scores with rank filters, softmax, values.

Ranks: G kv heads, R query heads per kv head (query head g·R + r), EH × EI the head dimension
as two halves (RoPE rotates pair (0, ei) with (1, ei), the Hugging Face half-split layout), F the
head dimension of values, P queries, M keys (M1 × M0 blocks for the 1-pass softmax).

The softmax and value product come from the colleague's builders (`attention.py`); the builder's
single-head cascade gets the batch ranks G and R and its score Einsum is replaced by the GQA
score over the rotated query and key halves. The Λ shape (S sinks + W window) is a rank filter on
the score Einsum, never a mask tensor.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from llmfab.compiler.attention import one_pass_attention, three_pass_attention
from llmfab.compiler.formats import FLOAT32, Format
from llmfab.compiler.ir import (
    Access,
    Affine,
    Binary,
    Cascade,
    Condition,
    Einsum,
    Expr,
    Iteration,
    Tensor,
    TensorRank,
    Unary,
)
from llmfab.compiler.lowering_text import CascadeText, number
from llmfab.compiler.parser import parse_einsum
from llmfab.compiler.printer import format_condition, print_cascade


class Softmax(enum.Enum):
    """Which builder computes softmax(QK)·V: FlashAttention-2 style (1 pass over M) or 3 passes."""

    ONE_PASS = "1pass"
    THREE_PASS = "3pass"


@dataclass(frozen=True)
class AttentionPlan:
    """Shapes and filters of one attention lowering.

    `window_filter` applies to scores of the query rotated at its own position (QR); with Λ
    prefill longer than S + W, sinks are scored by a second query rotation QS (position
    min(p, S + W - 1), StreamingLLM) under `sink_filter`, and the two score sets are merged.
    `cache_rotated`: the cache holds keys after RoPE (dense); otherwise (Λ) the cascade rotates
    the cached keys by their position tables COSK/SINK.
    """

    kv_heads: int
    group: int  # query heads per kv head
    head_dim: int
    queries: int
    keys: int
    softmax: Softmax
    block: int
    window_filter: Condition | None
    sink_filter: Condition | None
    cache_rotated: bool
    key_format: Format
    value_format: Format

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def blocked(self) -> bool:
        return self.softmax is Softmax.ONE_PASS

    def key_ranks(self) -> tuple[str, ...]:
        return ("M1", "M0") if self.blocked else ("M",)


def largest_block(keys: int, wanted: int) -> int:
    """The largest divisor of `keys` not above `wanted` (the 1-pass cascade needs whole blocks)."""
    return max(b for b in range(1, min(keys, max(wanted, 1)) + 1) if keys % b == 0)


def emit_rope(text: CascadeText, out: str, source: str, leading: tuple[str, ...], trailing: tuple[str, ...],
              cos: str, sin: str) -> None:
    """`out = rotate(source)` for tensors [leading.., EH, EI, trailing..]: pair (0, ei) with (1, ei).

    out[0] = x[0]·cos − x[1]·sin, out[1] = x[1]·cos + x[0]·sin (cos/sin indexed by EI and the
    position ranks in `trailing`), written as two Einsums on the two halves.
    """
    lead = "".join(f"{r.lower()}, " for r in leading)
    trail = ", ".join(r.lower() for r in trailing)

    def at(name: str, half: int) -> str:
        return f"{name}[{lead}{half}, ei, {trail}]"

    table = f"[ei, {trail}]"
    text.tensor(out, [*leading, "EH", "EI", *trailing], FLOAT32)
    text.add(
        f"{at(out, 0)} = {at(source, 0)} * {cos}{table} - {at(source, 1)} * {sin}{table}",
        f"{at(out, 1)} = {at(source, 1)} * {cos}{table} + {at(source, 0)} * {sin}{table}",
    )


def emit_attention(text: CascadeText, plan: AttentionPlan) -> str:
    """Scores, softmax and values for queries QR[G, R, EH, EI, P] (and QS for Λ sinks) over the
    cache KC[G, EH, EI, keys] / VC[F, G, keys]; returns the output tensor AV[F, G, R, P]."""
    text.rank("G", plan.kv_heads)
    text.rank("R", plan.group)
    text.rank("F", plan.head_dim)
    text.rank("P", plan.queries)
    keys = plan.key_ranks()
    if plan.blocked:
        text.rank("M1", plan.keys // plan.block, "M")
        text.rank("M0", plan.block, "M")
    else:
        text.rank("M", plan.keys)
    text.tensor("KC", ["G", "EH", "EI", *keys], plan.key_format)
    key_tensor = "KC"
    if not plan.cache_rotated:
        for table in ("COSK", "SINK"):
            text.tensor(table, ["EI", *keys], FLOAT32)
        emit_rope(text, "KR", "KC", ("G",), keys, "COSK", "SINK")
        key_tensor = "KR"
    builder = _builder(plan)
    tensors, statements = _with_gqa(builder, plan, key_tensor)
    for tensor in tensors:
        text.tensor(tensor.name, [r.rank + (f" + {r.extra}" if r.extra else "") for r in tensor.ranks], tensor.format)
    for line in print_cascade(Cascade((), (), statements)).splitlines():
        text.add(line)
    return "AV"


def _builder(plan: AttentionPlan) -> Cascade:
    if plan.blocked:
        return one_pass_attention(plan.keys, plan.queries, 1, plan.head_dim, plan.block, plan.scale,
                                  kv_format=plan.value_format)
    return three_pass_attention(plan.keys, plan.queries, 1, plan.head_dim, plan.scale, kv_format=plan.value_format)


_DROPPED = {"Q", "K", "BK"}
_VALUES = {"V": "VC", "BV": "VC"}
_SCORES = {"QK", "BQK"}
_KEY_RANKS = {"P", "M", "M1"}


def _batch_ranks(tensor: str) -> tuple[str, ...]:
    return ("G",) if tensor in _VALUES else ("G", "R")


def _insert_at(ranks: tuple[str, ...]) -> int:
    return next((i for i, r in enumerate(ranks) if r in _KEY_RANKS), len(ranks))


def _with_gqa(builder: Cascade, plan: AttentionPlan, key_tensor: str):
    """The builder's tensors and statements with batch ranks G (and R), values renamed VC, and
    the score Einsum replaced by the GQA scores (with the plan's filters)."""
    positions = {}
    tensors = []
    for tensor in builder.tensors:
        if tensor.name in _DROPPED:
            continue
        at = _insert_at(tensor.rank_names)
        positions[tensor.name] = at
        batch = tuple(TensorRank(r) for r in _batch_ranks(tensor.name))
        name = _VALUES.get(tensor.name, tensor.name)
        fmt = plan.value_format if tensor.name in _VALUES else tensor.format
        tensors.append(Tensor(name, tensor.ranks[:at] + batch + tensor.ranks[at:], fmt))

    def access(a: Access) -> Access:
        at = positions[a.tensor]
        batch = tuple(Affine.var(r.lower()) for r in _batch_ranks(a.tensor))
        return Access(_VALUES.get(a.tensor, a.tensor), a.indices[:at] + batch + a.indices[at:])

    def expr(e: Expr) -> Expr:
        if isinstance(e, Access):
            return access(e)
        if isinstance(e, Unary):
            return Unary(e.op, expr(e.operand))
        if isinstance(e, Binary):
            return Binary(e.op, expr(e.left), expr(e.right), e.merge)
        return e

    def einsums(group, fixed):
        found = []
        for einsum in group:
            if einsum.output.tensor in _SCORES:
                scores = _scores(plan, key_tensor, einsum.output.tensor, fixed)
                found.extend(scores)
                continue
            found.append(replace(einsum, output=access(einsum.output), expr=expr(einsum.expr)))
        return tuple(found)

    statements = []
    for statement in builder.statements:
        if isinstance(statement, Iteration):
            statements.append(replace(statement, init=einsums(statement.init, frozenset()),
                                      body=einsums(statement.body, frozenset({statement.index}))))
        else:
            statements.extend(einsums((statement,), frozenset()))
    extra = []
    score = "BQK" if plan.blocked else "QK"
    if plan.sink_filter is not None:
        for suffix in ("W", "S"):
            base = next(t for t in tensors if t.name == score)
            extra.append(Tensor(score + suffix, base.ranks, base.format))
    return tuple(extra + tensors), tuple(statements)


def _scores(plan: AttentionPlan, key_tensor: str, score: str, fixed: frozenset[str]) -> list[Einsum]:
    keys = "m1, m0" if plan.blocked else "m"
    out = f"g, r, {keys}, p"

    def one(target: str, query: str, where: Condition | None) -> Einsum:
        clause = ""
        if where is not None:
            if plan.blocked:
                where = where.substitute("m", Affine((("m0", 1), ("m1", plan.block))))
            clause = f" where {format_condition(where)}"
        return parse_einsum(f"{target}[{out}] = {query}[g, r, eh, ei, p] * {key_tensor}[g, eh, ei, {keys}] * "
                            f"{number(plan.scale)} reduce ei: sum, eh: sum{clause}", "lowering", fixed)

    if plan.sink_filter is None:
        return [one(score, "QR", plan.window_filter)]
    merged = parse_einsum(f"{score}[{out}] = {score}W[{out}] + {score}S[{out}]", "lowering", fixed)
    return [one(score + "W", "QR", plan.window_filter), one(score + "S", "QS", plan.sink_filter), merged]
