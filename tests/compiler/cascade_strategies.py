"""Hypothesis strategies: random valid cascades of a few Einsums over a few small ranks."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from llmfab.compiler.ir import (
    Access,
    Affine,
    Binary,
    Cascade,
    CmpOp,
    Comparison,
    ComputeOp,
    Condition,
    Const,
    Einsum,
    Merge,
    Rank,
    Reduction,
    Tensor,
    TensorRank,
    Unary,
    window_filter,
)

RANK_NAMES = ("I", "J", "K")
BINARY = (ComputeOp.ADD, ComputeOp.SUB, ComputeOp.MUL, ComputeOp.MAX, ComputeOp.MIN, ComputeOp.TAKE_LEFT)
REDUCE = (ComputeOp.ADD, ComputeOp.MAX, ComputeOp.MIN)
MERGES = tuple(Merge)


def _access(tensor: Tensor) -> Access:
    return Access(tensor.name, tuple(Affine.var(r.rank.lower()) for r in tensor.ranks))


@st.composite
def expressions(draw, tensors: list[Tensor], inputs: set[str], depth: int = 2):
    """Expressions whose values stay finite: exp and division only touch inputs in [-1, 1]."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        tensor = draw(st.sampled_from(tensors))
        leaf = _access(tensor)
        if tensor.name in inputs and draw(st.booleans()):
            return Unary(draw(st.sampled_from([ComputeOp.EXP, ComputeOp.SIGMOID, ComputeOp.NEG])), leaf)
        return leaf
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return Binary(ComputeOp.MUL, draw(expressions(tensors, inputs, depth - 1)),
                      Const(draw(st.sampled_from([0.5, -2.0, 3.0]))), Merge.INTERSECTION)
    if kind == 1:
        divisor = _access(draw(st.sampled_from([t for t in tensors if t.name in inputs])))
        return Binary(ComputeOp.DIV, draw(expressions(tensors, inputs, depth - 1)),
                      Unary(ComputeOp.EXP, divisor), draw(st.sampled_from(MERGES)))
    op = draw(st.sampled_from(BINARY))
    return Binary(op, draw(expressions(tensors, inputs, depth - 1)), draw(expressions(tensors, inputs, depth - 1)),
                  draw(st.sampled_from(MERGES)))


@st.composite
def cascades(draw) -> Cascade:
    count = draw(st.integers(1, 3))
    ranks = tuple(Rank(name, draw(st.integers(1, 4))) for name in RANK_NAMES[:count])
    tensors: list[Tensor] = []
    for number in range(draw(st.integers(1, 2))):
        names = draw(st.permutations([r.name for r in ranks]))[: draw(st.integers(1, count))]
        tensors.append(Tensor(f"X{number}", tuple(TensorRank(n) for n in names)))
    inputs = {t.name for t in tensors}
    statements = []
    for number in range(draw(st.integers(1, 3))):
        expr = draw(expressions(list(tensors), inputs))
        used = list(dict.fromkeys(n for a in _reads(expr) for i in a.indices for n in i.names()))
        kept = [n for n in used if draw(st.booleans())]
        output = Tensor(f"Y{number}", tuple(TensorRank(n.upper()) for n in kept))
        reduced = draw(st.permutations([n for n in used if n not in kept]))
        same_op = draw(st.booleans())
        first = draw(st.sampled_from(REDUCE))
        reductions = tuple(
            Reduction(n, first if same_op else draw(st.sampled_from(REDUCE)),
                      draw(st.sampled_from([Merge.UNION, Merge.INTERSECTION, Merge.PASS_THROUGH])))
            for n in reduced
        )
        where = None
        if len(used) >= 2 and draw(st.integers(0, 2)) > 0:
            a, b = draw(st.permutations(used))[:2]
            where = draw(st.sampled_from([
                Condition(((Comparison(Affine.var(a), CmpOp.LE, Affine.var(b)),),)),
                window_filter(a, b, 2),
                Condition(((Comparison(Affine.var(a), CmpOp.NE, Affine(((b, 1),), 1)),),)),
            ]))
        tensors.append(output)
        statements.append(Einsum(_access(output), expr, reductions, where))
    return Cascade(ranks, tuple(tensors), tuple(statements))


def _reads(expr):
    from llmfab.compiler.ir import accesses

    return accesses(expr)


def random_inputs(cascade: Cascade, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = {r.name: r.size for r in cascade.ranks}
    return {name: rng.uniform(-1, 1, size=[sizes[r] for r in cascade.tensor(name).rank_names])
            for name in cascade.inputs()}
