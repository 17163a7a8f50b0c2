"""Print a cascade in the IR text format (grammar in docs/ir.md).

The printer is canonical: it always writes formats, reductions and merges that differ from the
operator's default, so `parse_cascade(print_cascade(c)) == c` for every valid cascade.
"""

from __future__ import annotations

import math

from llmfab.compiler.ir import (
    REDUCE_NAMES,
    Access,
    Affine,
    Binary,
    Cascade,
    ComputeOp,
    Condition,
    Const,
    Einsum,
    Expr,
    Iteration,
    Merge,
    Tensor,
    Unary,
)

INFIX = {ComputeOp.ADD: "+", ComputeOp.SUB: "-", ComputeOp.MUL: "*", ComputeOp.DIV: "/"}
PRECEDENCE = {ComputeOp.ADD: 1, ComputeOp.SUB: 1, ComputeOp.MUL: 2, ComputeOp.DIV: 2}
FUNCTIONS = {ComputeOp.MAX: "max", ComputeOp.MIN: "min", ComputeOp.EXP: "exp",
             ComputeOp.SQRT: "sqrt", ComputeOp.RSQRT: "rsqrt", ComputeOp.SIGMOID: "sigmoid",
             ComputeOp.ROUND: "round"}


def print_cascade(cascade: Cascade) -> str:
    lines: list[str] = []
    for rank in cascade.ranks:
        text = f"rank {rank.name}"
        if rank.size is not None:
            text += f" = {rank.size}"
        if rank.part_of is not None:
            text += f" part of {rank.part_of}"
        lines.append(text)
    for tensor in cascade.tensors:
        lines.append(format_tensor(tensor))
    for statement in cascade.statements:
        if isinstance(statement, Iteration):
            head = f"iterate {statement.index} over {statement.rank}"
            if statement.until is not None:
                head += f" until {format_condition(statement.until)}"
            lines.append(head + " {")
            lines.extend(f"  init {format_einsum(e)}" for e in statement.init)
            lines.extend(f"  {format_einsum(e)}" for e in statement.body)
            lines.append("}")
        else:
            lines.append(format_einsum(statement))
    return "\n".join(lines) + "\n"


def format_tensor(tensor: Tensor) -> str:
    ranks = ", ".join(r.rank + (f" + {r.extra}" if r.extra else "") for r in tensor.ranks)
    return f"tensor {tensor.name}[{ranks}] : {tensor.format.spelling()}"


def format_einsum(einsum: Einsum) -> str:
    text = f"{format_access(einsum.output)} = {format_expr(einsum.expr)}"
    if einsum.reductions:
        parts = [
            f"{r.index}: {REDUCE_NAMES[r.op]}{_merge_suffix(r.merge, Merge.UNION)}" for r in einsum.reductions
        ]
        text += " reduce " + ", ".join(parts)
    if einsum.where is not None:
        text += " where " + format_condition(einsum.where)
    if einsum.loop_order is not None:
        text += " order (" + ", ".join(einsum.loop_order) + ")"
    if einsum.fusion_group is not None:
        text += f" group {einsum.fusion_group}"
    return text


def format_access(access: Access) -> str:
    return f"{access.tensor}[{', '.join(format_affine(i) for i in access.indices)}]"


def format_affine(affine: Affine) -> str:
    parts: list[str] = []
    for name, coeff in affine.terms:
        magnitude = abs(coeff)
        term = name if magnitude == 1 else f"{magnitude}*{name}"
        if not parts:
            parts.append(term if coeff > 0 else f"-{term}")
        else:
            parts.append(("+ " if coeff > 0 else "- ") + term)
    if affine.constant or not parts:
        if not parts:
            parts.append(str(affine.constant))
        else:
            parts.append(("+ " if affine.constant > 0 else "- ") + str(abs(affine.constant)))
    return " ".join(parts)


def format_condition(condition: Condition) -> str:
    branches = []
    for clause in condition.clauses:
        text = format_affine(clause[0].left)
        for index, comparison in enumerate(clause):
            if index > 0:
                if clause[index - 1].right == comparison.left:
                    pass  # chain: `a < b <= c`
                else:
                    text += " and " + format_affine(comparison.left)
            text += f" {comparison.op.value} {format_affine(comparison.right)}"
        branches.append(text)
    return " or ".join(branches)


def format_expr(expr: Expr, parent_precedence: int = 0, right_side: bool = False) -> str:
    if isinstance(expr, Const):
        return _format_number(expr.value)
    if isinstance(expr, Access):
        return format_access(expr)
    if isinstance(expr, Unary):
        if expr.op is ComputeOp.NEG:
            inner = expr.operand
            body = format_expr(inner, 3)
            if isinstance(inner, Const) or body.startswith("-"):
                body = f"({format_expr(inner)})"
            return "-" + body
        return f"{FUNCTIONS[expr.op]}({format_expr(expr.operand)})"
    if expr.op in INFIX:
        precedence = PRECEDENCE[expr.op]
        text = (
            f"{format_expr(expr.left, precedence)} {INFIX[expr.op]}"
            f"{_merge_suffix(expr.merge, expr.op.default_merge)} {format_expr(expr.right, precedence, True)}"
        )
        # Left-associative: a right operand of equal precedence needs parentheses.
        if precedence < parent_precedence or (precedence == parent_precedence and right_side):
            return f"({text})"
        return text
    suffix = _merge_suffix(expr.merge, expr.op.default_merge)
    left, right = format_expr(expr.left), format_expr(expr.right)
    if expr.op in (ComputeOp.TAKE_LEFT, ComputeOp.TAKE_RIGHT):
        which = 0 if expr.op is ComputeOp.TAKE_LEFT else 1
        return f"take{suffix}({left}, {right}, {which})"
    return f"{FUNCTIONS[expr.op]}{suffix}({left}, {right})"


def _merge_suffix(merge: Merge, default: Merge) -> str:
    return "" if merge is default else "{" + merge.value + "}"


def _format_number(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value))
    return text
