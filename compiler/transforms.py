"""Transformations of a cascade; each returns a new cascade that computes the same outputs.

* `group_by_pass`: fusion grouping from the pass analysis (order + `group` annotations).
* `split_rank`: rank partitioning (tiling) K -> K1 x K0, rewriting tensors and Einsums.
* `set_loop_order`: loop order of one Einsum, reordering its reductions when that is legal.

Tests check every transformation against the reference interpreter.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import numpy as np

from llmfab.compiler.ir import (
    Access,
    Affine,
    Binary,
    Cascade,
    Const,
    Einsum,
    Expr,
    Iteration,
    Rank,
    Reduction,
    Statement,
    Tensor,
    TensorRank,
    Unary,
)
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.passes import analyze_passes
from llmfab.compiler.validate import index_ranks, iteration_space, validate

# ---------------------------------------------------------------------------- fusion grouping


@dataclass(frozen=True)
class FusionGroup:
    """Statements that run in one pass over the rank (fusable tile by tile), or between passes."""

    number: int
    pass_number: int
    traverses: bool
    einsums: tuple[str, ...]  # labels

    def describe(self) -> str:
        where = f"pass {self.pass_number}" if self.traverses else f"after pass {self.pass_number}"
        return f"group {self.number} ({where}): {', '.join(self.einsums)}"


def group_by_pass(cascade: Cascade, rank: str) -> tuple[Cascade, tuple[FusionGroup, ...]]:
    """Order statements so each pass's Einsums are contiguous and annotate them with `group`."""
    analysis = analyze_passes(cascade, rank)
    slots = iter(2 * e.pass_number if e.traverses else 2 * e.pass_number + 1 for e in analysis.einsums)
    unit_slot = []
    for statement in cascade.statements:
        count = len(statement.einsums()) if isinstance(statement, Iteration) else 1
        unit_slot.append(max(next(slots) for _ in range(count)))
    order = _stable_topological_order(cascade.statements, unit_slot)
    group_of = {slot: number for number, slot in enumerate(sorted(set(unit_slot)))}
    statements, members = [], {}
    for index in order:
        group = group_of[unit_slot[index]]
        statement = _annotate(cascade.statements[index], group)
        statements.append(statement)
        labels = [e.label for e in statement.einsums()] if isinstance(statement, Iteration) else [statement.label]
        members.setdefault(unit_slot[index], []).extend(labels)
    groups = tuple(
        FusionGroup(group_of[slot], slot // 2, slot % 2 == 0, tuple(labels)) for slot, labels in sorted(members.items())
    )
    return validate(cascade.replace_statements(statements)), groups


def _annotate(statement: Statement, group: int) -> Statement:
    if isinstance(statement, Iteration):
        return replace(
            statement,
            init=tuple(replace(e, fusion_group=group) for e in statement.init),
            body=tuple(replace(e, fusion_group=group) for e in statement.body),
        )
    return replace(statement, fusion_group=group)


def _stable_topological_order(statements, priority: list[int]) -> list[int]:
    """Kahn's algorithm preferring lower priority, then the original position."""
    reads = [_tensors(s, reads=True) for s in statements]
    writes = [_tensors(s, reads=False) for s in statements]
    successors: list[set[int]] = [set() for _ in statements]
    blockers = [0] * len(statements)
    for i in range(len(statements)):
        for j in range(i + 1, len(statements)):
            if writes[i] & (reads[j] | writes[j]) or reads[i] & writes[j]:
                successors[i].add(j)
                blockers[j] += 1
    ready = [(priority[i], i) for i in range(len(statements)) if blockers[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in sorted(successors[i]):
            blockers[j] -= 1
            if blockers[j] == 0:
                heapq.heappush(ready, (priority[j], j))
    return order


def _tensors(statement: Statement, reads: bool) -> set[str]:
    einsums = statement.einsums() if isinstance(statement, Iteration) else (statement,)
    if reads:
        return {a.tensor for e in einsums for a in e.reads()}
    return {e.output.tensor for e in einsums}


# ---------------------------------------------------------------------------- rank partitioning


@dataclass(frozen=True)
class RankSplit:
    """Partition rank `rank` into `outer` x `inner` with `inner_size` coordinates per tile.

    Coordinate k becomes (k1, k0) with k = inner_size * k1 + k0; tensors keep the outer rank
    where the original one was, immediately followed by the inner rank.
    """

    rank: str
    inner_size: int
    outer: str = ""
    inner: str = ""

    def names(self) -> tuple[str, str]:
        return self.outer or f"{self.rank}1", self.inner or f"{self.rank}0"

    def apply(self, cascade: Cascade) -> Cascade:
        validate(cascade)
        original = cascade.rank(self.rank)
        outer, inner = self.names()
        if original.size is None:
            raise IRError(f"cannot split rank {self.rank}: it has no size; declare `rank {self.rank} = <size>`")
        if self.inner_size < 1 or original.size % self.inner_size:
            raise IRError(f"cannot split rank {self.rank} of size {original.size} into tiles of "
                          f"{self.inner_size}; choose a tile size that divides it")
        for name in (outer, inner):
            if any(r.name == name for r in cascade.ranks):
                raise IRError(f"cannot split rank {self.rank}: rank {name} already exists; pass other names")
        origin = original.part_of or original.name
        ranks = []
        for rank in cascade.ranks:
            if rank.name == self.rank:
                ranks += [Rank(outer, original.size // self.inner_size, origin), Rank(inner, self.inner_size, origin)]
            else:
                ranks.append(rank)
        tensors = tuple(self._split_tensor(t) for t in cascade.tensors)
        statements = []
        for statement in cascade.statements:
            if isinstance(statement, Iteration):
                if statement.rank == self.rank:
                    raise IRError(f"cannot split rank {self.rank}: `iterate {statement.index}` runs over it")
                statements.append(replace(
                    statement,
                    init=tuple(self._split_einsum(cascade, e, statement) for e in statement.init),
                    body=tuple(self._split_einsum(cascade, e, statement) for e in statement.body),
                ))
            else:
                statements.append(self._split_einsum(cascade, statement, None))
        return validate(Cascade(tuple(ranks), tensors, tuple(statements)))

    def _split_tensor(self, tensor: Tensor) -> Tensor:
        outer, inner = self.names()
        ranks = []
        for tensor_rank in tensor.ranks:
            if tensor_rank.rank != self.rank:
                ranks.append(tensor_rank)
            elif tensor_rank.extra:
                raise IRError(f"cannot split rank {self.rank}: tensor {tensor.name} extends it by {tensor_rank.extra}")
            else:
                ranks += [TensorRank(outer), TensorRank(inner)]
        return replace(tensor, ranks=tuple(ranks))

    def _split_einsum(self, cascade: Cascade, einsum: Einsum, iteration: Iteration | None) -> Einsum:
        used = set(einsum.index_names()) | ({iteration.index} if iteration else set())
        split: dict[str, tuple[str, str]] = {}
        for access in [einsum.output, *einsum.reads()]:
            tensor = cascade.tensor(access.tensor)
            for tensor_rank, index in zip(tensor.ranks, access.indices):
                name = index.plain_var
                if tensor_rank.rank == self.rank and name and name not in split:
                    split[name] = (_fresh(name + "1", used), _fresh(name + "0", used))
        substitution = {v: Affine(((o, self.inner_size), (i, 1))) for v, (o, i) in split.items()}

        def rewrite(access: Access) -> Access:
            tensor = cascade.tensor(access.tensor)
            indices: list[Affine] = []
            for tensor_rank, index in zip(tensor.ranks, access.indices):
                if tensor_rank.rank == self.rank:
                    if index.plain_var in split:
                        o, i = split[index.plain_var]
                        indices += [Affine.var(o), Affine.var(i)]
                    elif not index.terms:
                        indices += [Affine.const(index.constant // self.inner_size),
                                    Affine.const(index.constant % self.inner_size)]
                    else:
                        raise IRError(f"cannot split rank {self.rank} in Einsum {einsum.label}: {access.tensor} "
                                      "is indexed there by an expression, not a single index")
                else:
                    for name, value in substitution.items():
                        index = index.substitute(name, value)
                    indices.append(index)
            return Access(access.tensor, tuple(indices))

        reductions: list[Reduction] = []
        for reduction in einsum.reductions:
            if reduction.index in split:
                o, i = split[reduction.index]
                reductions += [replace(reduction, index=i), replace(reduction, index=o)]
            else:
                reductions.append(reduction)
        where = einsum.where
        for name, value in substitution.items():
            where = where.substitute(name, value) if where is not None else None
        order = einsum.loop_order
        if order is not None:
            order = tuple(n for v in order for n in (split[v] if v in split else (v,)))
        return Einsum(rewrite(einsum.output), _map_accesses(einsum.expr, rewrite), tuple(reductions), where,
                      order, einsum.fusion_group)

    def split_arrays(self, cascade: Cascade, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Reshape arrays laid out for `cascade` (before the split) to the split layout."""
        out = {}
        for name, array in arrays.items():
            ranks = cascade.tensor(name).rank_names
            array = np.asarray(array)
            if self.rank in ranks:
                axis = ranks.index(self.rank)
                shape = array.shape[:axis] + (-1, self.inner_size) + array.shape[axis + 1 :]
                array = array.reshape(shape)
            out[name] = array
        return out

    def merge_arrays(self, cascade: Cascade, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inverse of `split_arrays`: back to the layout of `cascade` (before the split)."""
        out = {}
        for name, array in arrays.items():
            ranks = cascade.tensor(name).rank_names
            if self.rank in ranks:
                axis = ranks.index(self.rank)
                array = array.reshape(array.shape[:axis] + (-1,) + array.shape[axis + 2 :])
            out[name] = array
        return out


def split_rank(cascade: Cascade, rank: str, inner_size: int, outer: str = "", inner: str = "") -> Cascade:
    return RankSplit(rank, inner_size, outer, inner).apply(cascade)


def _fresh(name: str, used: set[str]) -> str:
    candidate, n = name, 0
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate


def _map_accesses(expr: Expr, rewrite) -> Expr:
    if isinstance(expr, Access):
        return rewrite(expr)
    if isinstance(expr, Unary):
        return Unary(expr.op, _map_accesses(expr.operand, rewrite))
    if isinstance(expr, Binary):
        return Binary(expr.op, _map_accesses(expr.left, rewrite), _map_accesses(expr.right, rewrite), expr.merge)
    assert isinstance(expr, Const)
    return expr


# ---------------------------------------------------------------------------- loop order


def set_loop_order(cascade: Cascade, label: str, order: tuple[str, ...]) -> Cascade:
    """Annotate the Einsum `label` with a loop order (outermost first).

    Reductions run innermost first, so the reduce list is reordered to match. That is legal
    when all reductions use the same compute and merge (they commute); otherwise the requested
    order must keep the reduced indices nested as they are.
    """
    validate(cascade)
    found = False

    def reorder(einsum: Einsum, iteration: Iteration | None) -> Einsum:
        nonlocal found
        if einsum.label != label:
            return einsum
        found = True
        space = iteration_space(cascade, replace(einsum, loop_order=None), iteration)
        if sorted(order) != sorted(space):
            raise IRError(f"Einsum {label}: loop order ({', '.join(order)}) must list each index of "
                          f"({', '.join(space)}) once")
        index_ranks(cascade, einsum, iteration)
        by_index = {r.index: r for r in einsum.reductions}
        wanted = [by_index[n] for n in reversed(order) if n in by_index]
        if len({(r.op, r.merge) for r in einsum.reductions}) > 1 and wanted != list(einsum.reductions):
            raise IRError(f"Einsum {label}: reductions {', '.join(r.index + ':' + r.op.value for r in einsum.reductions)} "
                          "do not commute, so the loop order must keep them nested innermost-first as listed")
        return replace(einsum, loop_order=tuple(order), reductions=tuple(wanted))

    statements = []
    for statement in cascade.statements:
        if isinstance(statement, Iteration):
            statements.append(replace(statement, init=tuple(reorder(e, statement) for e in statement.init),
                                      body=tuple(reorder(e, statement) for e in statement.body)))
        else:
            statements.append(reorder(statement, None))
    if not found:
        labels = ", ".join(e.label for e, _ in cascade.einsums())
        raise IRError(f"no Einsum {label} in the cascade (Einsums: {labels})")
    return validate(cascade.replace_statements(statements))
