"""Static checks of a cascade: every error names the tensor or Einsum and says what to do."""

from __future__ import annotations

import math

from llmfab.compiler.ir import (
    REDUCE_NAMES,
    Access,
    Binary,
    Cascade,
    Const,
    Einsum,
    Expr,
    Iteration,
    Merge,
    Unary,
)
from llmfab.compiler.ir_errors import IRError


def validate(cascade: Cascade) -> Cascade:
    """Raise IRError on the first problem found; return the cascade unchanged otherwise."""
    _check_declarations(cascade)
    for statement in cascade.statements:
        if isinstance(statement, Iteration):
            _check_iteration(cascade, statement)
        else:
            check_einsum(cascade, statement, None)
    _check_order(cascade)
    return cascade


def index_ranks(cascade: Cascade, einsum: Einsum, iteration: Iteration | None) -> dict[str, str]:
    """Map each index of an Einsum to the rank it ranges over.

    An index is bound where it appears alone in a tensor position; the iteration index of an
    enclosing iterative rank is bound to that rank. One index may index several ranks only if
    they have the same size.
    """
    bound: dict[str, tuple[str, str]] = {}  # index -> (rank, tensor that bound it)
    if iteration is not None and einsum in iteration.body:
        bound[iteration.index] = (iteration.rank, f"iterate {iteration.index} over {iteration.rank}")
    for access in [einsum.output, *einsum.reads()]:
        tensor = cascade.tensor(access.tensor)
        for position, index in enumerate(access.indices):
            name = index.plain_var
            if name is None or position >= len(tensor.ranks):
                continue
            rank = tensor.ranks[position].rank
            if name not in bound:
                bound[name] = (rank, access.tensor)
                continue
            other_rank, other_tensor = bound[name]
            size, other_size = cascade.rank(rank).size, cascade.rank(other_rank).size
            if rank != other_rank and size is not None and other_size is not None and size != other_size:
                raise IRError(
                    f"Einsum {einsum.label}: index {name} ranges over rank {other_rank} (size {other_size}, "
                    f"in {other_tensor}) and rank {rank} (size {size}, in {access.tensor}); a rank used "
                    "with two sizes cannot share one index, so use a separate index for each"
                )
    return {name: rank for name, (rank, _) in bound.items()}


def iteration_space(cascade: Cascade, einsum: Einsum, iteration: Iteration | None) -> list[str]:
    """Indices the Einsum iterates over (loop order if annotated), excluding a fixed iteration index."""
    fixed = iteration.index if iteration is not None and einsum in iteration.body else None
    names = [n for n in einsum.index_names() if n[0].islower() and n != fixed]
    if einsum.loop_order is not None:
        return list(einsum.loop_order)
    return names


def check_einsum(cascade: Cascade, einsum: Einsum, iteration: Iteration | None) -> None:
    label = f"Einsum {einsum.label}"
    for access in [einsum.output, *einsum.reads()]:
        if not cascade.has_tensor(access.tensor):
            role = "writes" if access is einsum.output else "reads"
            raise IRError(f"{label} {role} tensor {access.tensor}, which is not declared; "
                          f"add `tensor {access.tensor}[<ranks>]`")
        tensor = cascade.tensor(access.tensor)
        if len(access.indices) != len(tensor.ranks):
            raise IRError(f"{label}: {access.tensor} has {len(tensor.ranks)} ranks "
                          f"({', '.join(tensor.rank_names) or 'none'}) but is indexed with {len(access.indices)}")
        for index in access.indices:
            _check_names(cascade, label, index.names())
    if einsum.where is not None:
        _check_names(cascade, label, einsum.where.names())
    _check_expr(label, einsum.expr)
    bound = index_ranks(cascade, einsum, iteration)
    fixed = iteration.index if iteration is not None and einsum in iteration.body else None
    indices = [n for n in einsum.index_names() if n[0].islower()]
    for name in indices:
        if name not in bound:
            raise IRError(f"{label}: index {name} never indexes a tensor on its own, so its range is unknown; "
                          f"use {name} alone in some tensor position")
    out_names = [i.plain_var for i in einsum.output.indices if i.plain_var and i.plain_var != fixed]
    if len(set(out_names)) != len(out_names):
        raise IRError(f"{label}: an index appears twice in the output; use each output index once")
    rhs_names = {n for a in einsum.reads() for n in a.index_names()}
    if einsum.where is not None:
        rhs_names |= einsum.where.names()
    for name in out_names:
        if einsum.reads() and name not in rhs_names:
            raise IRError(f"{label}: output index {name} is not in the iteration space of the right-hand side, "
                          f"so {einsum.output.tensor} would not vary with it; index an operand with {name} "
                          "or write a constant instead")
    for name in einsum.output.index_names():
        if name[0].islower() and name != fixed and name not in out_names:
            raise IRError(f"{label}: output index expression uses {name}, which must appear alone in the output")
    reduced = [r.index for r in einsum.reductions]
    for reduction in einsum.reductions:
        if reduction.index in out_names or reduction.index == fixed or reduction.index not in indices:
            raise IRError(f"{label}: cannot reduce index {reduction.index}; only indices of the right-hand side "
                          "that are absent from the output can be reduced")
        if reduction.op not in REDUCE_NAMES:
            raise IRError(f"{label}: {reduction.op.value} cannot reduce {reduction.index}; use sum, max, min or prod")
        if reduction.merge is Merge.RIGHT_NONZERO:
            raise IRError(f"{label}: the right-nonzero merge needs two operands, so it cannot reduce "
                          f"{reduction.index}; use union, intersect or pass")
    if len(set(reduced)) != len(reduced):
        raise IRError(f"{label}: an index is reduced twice")
    for name in indices:
        if name not in out_names and name != fixed and name not in reduced:
            raise IRError(f"{label}: index {name} is neither in the output nor reduced; add `reduce {name}: sum`")
    if einsum.loop_order is not None:
        space = [n for n in indices if n != fixed]
        if sorted(einsum.loop_order) != sorted(space):
            raise IRError(f"{label}: loop order ({', '.join(einsum.loop_order)}) must list each index of the "
                          f"iteration space ({', '.join(space)}) exactly once")


def _check_names(cascade: Cascade, label: str, names) -> None:
    for name in names:
        if name[0].isupper():
            cascade.rank(name)  # raises with a fix if undeclared
        elif not name[0].islower():
            raise IRError(f"{label}: '{name}' is neither an index (lower-case) nor a rank (upper-case)")


def _check_expr(label: str, expr: Expr) -> None:
    if isinstance(expr, Const):
        if math.isnan(expr.value):
            raise IRError(f"{label}: NaN is not a valid constant")
    elif isinstance(expr, Unary):
        if expr.op.arity != 1:
            raise IRError(f"{label}: {expr.op.value} takes 2 operands but is applied to 1")
        _check_expr(label, expr.operand)
    elif isinstance(expr, Binary):
        if expr.op.arity != 2:
            raise IRError(f"{label}: {expr.op.value} takes 1 operand but is applied to 2")
        _check_expr(label, expr.left)
        _check_expr(label, expr.right)
    elif not isinstance(expr, Access):
        raise IRError(f"{label}: {type(expr).__name__} is not an expression node")


def _check_declarations(cascade: Cascade) -> None:
    seen: dict[str, object] = {}
    for rank in cascade.ranks:
        if not rank.name[:1].isupper():
            raise IRError(f"rank {rank.name!r} must start with an upper-case letter")
        if rank.name in seen:
            raise IRError(f"rank {rank.name} is declared twice; keep one declaration")
        if rank.size is not None and rank.size < 1:
            raise IRError(f"rank {rank.name} has size {rank.size}; sizes must be at least 1")
        seen[rank.name] = rank
    names: set[str] = set()
    for tensor in cascade.tensors:
        if tensor.name in names:
            raise IRError(f"tensor {tensor.name} is declared twice; keep one declaration")
        names.add(tensor.name)
        for tensor_rank in tensor.ranks:
            if tensor_rank.rank not in seen:
                raise IRError(f"tensor {tensor.name} uses rank {tensor_rank.rank}, which is not declared; "
                              f"add `rank {tensor_rank.rank} = <size>`")
            if tensor_rank.extra < 0:
                raise IRError(f"tensor {tensor.name}: rank {tensor_rank.rank} cannot be shortened")
        if len(set(tensor.rank_names)) != len(tensor.rank_names):
            raise IRError(f"tensor {tensor.name} lists a rank twice; split it into two ranks of the same size")


def _check_iteration(cascade: Cascade, iteration: Iteration) -> None:
    cascade.rank(iteration.rank)
    if not iteration.index[:1].islower():
        raise IRError(f"iterate over {iteration.rank}: index {iteration.index!r} must be lower-case")
    if not iteration.body:
        raise IRError(f"iterate {iteration.index} over {iteration.rank}: the body is empty")
    if iteration.until is not None:
        for name in iteration.until.names():
            if name != iteration.index and not name[0].isupper():
                raise IRError(f"iterate {iteration.index}: the stopping condition may use only "
                              f"{iteration.index} and rank sizes, not {name}")
            if name[0].isupper():
                cascade.rank(name)
    for einsum in iteration.init:
        if iteration.index in einsum.index_names():
            raise IRError(f"Einsum {einsum.label}: init statements run once, before {iteration.index} exists")
    for einsum in iteration.einsums():
        check_einsum(cascade, einsum, iteration)


def _check_order(cascade: Cascade) -> None:
    """Each read must follow a write of its tensor, except loop-carried state reads."""
    written = cascade.written()
    available = {name for name in (t.name for t in cascade.tensors) if name not in written}
    flat = cascade.einsums()
    for position, (einsum, iteration) in enumerate(flat):
        for access in einsum.reads():
            name = access.tensor
            if name in available or _is_carried(einsum, access, iteration):
                continue
            if name == einsum.output.tensor:
                raise IRError(f"Einsum {einsum.label} reads its own output {name} (a cycle); write the new "
                              "value to another tensor, or use an iterative rank for a recurrence")
            cycle = _find_cycle(flat, position, name)
            if cycle:
                raise IRError(f"cycle between Einsums: {' -> '.join(cycle)}; a cascade must be a DAG")
            raise IRError(f"Einsum {einsum.label} reads {name} before any Einsum writes it; "
                          f"move it after the Einsum that writes {name}")
        available.add(einsum.output.tensor)


def _is_carried(einsum: Einsum, access: Access, iteration: Iteration | None) -> bool:
    """A body read of state written by the same body at a later step of the iteration index."""
    if iteration is None or einsum not in iteration.body:
        return False
    for writer in iteration.body:
        if writer.output.tensor != access.tensor:
            continue
        for read_index, write_index in zip(access.indices, writer.output.indices):
            coeff = dict(write_index.terms).get(iteration.index, 0)
            if coeff and dict(read_index.terms).get(iteration.index, 0) == coeff:
                if read_index.constant < write_index.constant:
                    return True
    return False


def _find_cycle(flat, position: int, target: str) -> list[str] | None:
    """Path of tensors from `target` (written later) back to the Einsum at `position`, if any."""
    start = flat[position][0].output.tensor
    writers: dict[str, list] = {}
    for einsum, _ in flat[position:]:
        writers.setdefault(einsum.output.tensor, []).append(einsum)
    stack, seen = [(target, [start, target])], set()
    while stack:
        tensor, path = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for writer in writers.get(tensor, []):
            for read in writer.reads():
                if read.tensor == start:
                    return path + [start]
                stack.append((read.tensor, path + [read.tensor]))
    return None
