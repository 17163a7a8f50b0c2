"""Import and export of the `einsum:` section of TeAAL YAML specifications.

TeAAL declares each tensor as a list of rank names and writes expressions such as
`Z[m, n] = A[k, m] * B[k, n]`; its parser accepts only `+` (union), `*` (intersection) and
`take(a, b, i)`, with every index absent from the output summed. Rank sizes and element
formats are not part of that section: import takes sizes as an argument and uses float32;
export drops both. An optional `mapping: loop-order:` section carries loop orders.
"""

from __future__ import annotations

import yaml

from llmfab.compiler.formats import FLOAT32
from llmfab.compiler.ir import (
    Binary,
    Cascade,
    ComputeOp,
    Const,
    Einsum,
    Expr,
    Iteration,
    Merge,
    Rank,
    Tensor,
    TensorRank,
    Unary,
)
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_einsum
from llmfab.compiler.printer import format_access, format_expr
from llmfab.compiler.validate import validate

_TEAAL_OPS = {ComputeOp.ADD: Merge.UNION, ComputeOp.MUL: Merge.INTERSECTION,
              ComputeOp.TAKE_LEFT: Merge.INTERSECTION, ComputeOp.TAKE_RIGHT: Merge.INTERSECTION}


def from_teaal(text: str, source: str = "<teaal>", rank_sizes: dict[str, int] | None = None) -> Cascade:
    """Build a cascade from TeAAL YAML text (sizes from `rank_sizes`, else symbolic)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise IRError(f"{source}: not valid YAML: {err}") from None
    section = document.get("einsum") if isinstance(document, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("declaration"), dict):
        raise IRError(f"{source}: expected an `einsum:` section with `declaration:` and `expressions:`")
    expressions = section.get("expressions")
    if not isinstance(expressions, list) or not all(isinstance(e, str) for e in expressions):
        raise IRError(f"{source}: `einsum: expressions:` must be a list of strings like 'Z[m] = A[m]'")
    sizes = dict(rank_sizes or {})
    rank_order: dict[str, None] = {}
    tensors = []
    for name, ranks in section["declaration"].items():
        if not isinstance(ranks, list) or not all(isinstance(r, str) for r in ranks):
            raise IRError(f"{source}: declaration of {name} must be a list of rank names")
        for rank in ranks:
            rank_order.setdefault(rank, None)
        tensors.append(Tensor(str(name), tuple(TensorRank(r) for r in ranks), FLOAT32))
    unknown = set(sizes) - set(rank_order)
    if unknown:
        raise IRError(f"{source}: sizes given for ranks {', '.join(sorted(unknown))} that no tensor declares")
    ranks = tuple(Rank(r, sizes.get(r)) for r in rank_order)
    loop_orders = _loop_orders(document, source)
    statements = []
    for number, expression in enumerate(expressions, start=1):
        einsum = parse_einsum(expression, f"{source}: expression {number}")
        order = loop_orders.get(einsum.output.tensor)
        if order is not None:
            indices = tuple(rank.lower() for rank in order)
            by_index = {r.index: r for r in einsum.reductions}
            reductions = tuple(by_index[i] for i in reversed(indices) if i in by_index)
            einsum = Einsum(einsum.output, einsum.expr, reductions, None, indices, None)
        statements.append(einsum)
    cascade = validate(Cascade(ranks, tuple(tensors), tuple(statements)))
    check_teaal_subset(cascade)
    return cascade


def _loop_orders(document: dict, source: str) -> dict[str, list[str]]:
    mapping = document.get("mapping") or {}
    orders = mapping.get("loop-order") or {} if isinstance(mapping, dict) else {}
    if not isinstance(orders, dict):
        raise IRError(f"{source}: `mapping: loop-order:` must map tensor names to lists of ranks")
    return {str(k): list(v) for k, v in orders.items() if v is not None}


def check_teaal_subset(cascade: Cascade) -> None:
    """Raise IRError naming the Einsum and construct that TeAAL's expressions cannot express."""
    for statement in cascade.statements:
        if isinstance(statement, Iteration):
            raise IRError(f"TeAAL cannot express the iterative rank `iterate {statement.index} over "
                          f"{statement.rank}`; only flat cascades export")
        einsum, label = statement, f"Einsum {statement.label}"
        if einsum.where is not None:
            raise IRError(f"{label}: TeAAL expressions have no rank filters (`where`)")
        if einsum.fusion_group is not None:
            raise IRError(f"{label}: TeAAL has no fusion-group annotation; export before group_by_pass")
        for reduction in einsum.reductions:
            if reduction.op is not ComputeOp.ADD or reduction.merge is not Merge.UNION:
                raise IRError(f"{label}: TeAAL reduces only by sum (union); {reduction.index} uses "
                              f"{reduction.op.value} ({reduction.merge.value})")
        for access in [einsum.output, *einsum.reads()]:
            tensor = cascade.tensor(access.tensor)
            for tensor_rank, index in zip(tensor.ranks, access.indices):
                if index.plain_var != tensor_rank.rank.lower() or tensor_rank.extra:
                    raise IRError(f"{label}: TeAAL indexes rank {tensor_rank.rank} of {access.tensor} with "
                                  f"{tensor_rank.rank.lower()}, not an expression or another index")
        _check_expr(label, einsum.expr)


def _check_expr(label: str, expr: Expr) -> None:
    if isinstance(expr, Const):
        raise IRError(f"{label}: TeAAL expressions have no constants ({expr.value!r})")
    if isinstance(expr, Unary):
        raise IRError(f"{label}: TeAAL expressions have no {expr.op.value}(); only +, * and take()")
    if isinstance(expr, Binary):
        if _TEAAL_OPS.get(expr.op) is not expr.merge:
            raise IRError(f"{label}: TeAAL supports +, * and take() with their default merges, "
                          f"not {expr.op.value} ({expr.merge.value})")
        _check_expr(label, expr.left)
        _check_expr(label, expr.right)


def to_teaal(cascade: Cascade) -> str:
    """TeAAL YAML (`einsum:` and, with loop orders, `mapping: loop-order:`) of a flat cascade."""
    validate(cascade)
    check_teaal_subset(cascade)
    declaration = {t.name: list(t.rank_names) for t in cascade.tensors}
    expressions = [f"{format_access(e.output)} = {format_expr(e.expr)}" for e in cascade.statements]
    document: dict = {"einsum": {"declaration": declaration, "expressions": expressions}}
    orders = {e.output.tensor: [i.upper() for i in e.loop_order] for e in cascade.statements if e.loop_order}
    if orders:
        document["mapping"] = {"loop-order": orders}
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None)
