"""FuseMax pass analysis: how many times a cascade must traverse the fibers of a rank.

An Einsum that reduces a rank completely produces values that exist only after a whole fiber
has been traversed. A later Einsum that traverses the rank again and needs those values starts
another pass; N such dependencies make N + 1 passes. The count holds for every mapping, so it
bounds what fusion can achieve: Einsums in one pass can be fused tile by tile, Einsums in
different passes cannot (the fiber must be buffered whole or read again).

Partitioned ranks count as their origin (`rank M1 = 4 part of M`). An iteration over a part of
the rank is one traversal; its state is complete only when the loop ends, so reading it after
the loop counts as after a full traversal.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmfab.compiler.ir import Cascade, Einsum, Iteration
from llmfab.compiler.validate import index_ranks, validate


@dataclass(frozen=True)
class EinsumPass:
    """Where one Einsum sits relative to the passes over the analysed rank.

    `traverses` says whether the Einsum iterates over the rank; if so it runs in pass `pass_number`
    (1-based). Otherwise it runs after `pass_number` complete passes (0: before the first).
    """

    label: str
    pass_number: int
    traverses: bool


@dataclass(frozen=True)
class PassAnalysis:
    rank: str
    passes: int  # passes over the rank's fibers; 0 if no Einsum traverses the rank
    einsums: tuple[EinsumPass, ...]  # in execution order
    tensor_passes: tuple[tuple[str, int], ...]  # tensor -> number of passes that traverse it on the rank

    def tensor(self, name: str) -> int:
        return dict(self.tensor_passes).get(name, 0)


def root_rank(cascade: Cascade, name: str) -> str:
    """Follow `part of` links to the rank a partitioned rank came from."""
    seen = set()
    ranks = {r.name: r for r in cascade.ranks}
    while name in ranks and ranks[name].part_of is not None and name not in seen:
        seen.add(name)
        name = ranks[name].part_of
    return name


def logical_ranks(cascade: Cascade) -> list[str]:
    """Ranks of the cascade with partitions folded into their origin, in declaration order."""
    roots: dict[str, None] = {}
    for rank in cascade.ranks:
        roots.setdefault(root_rank(cascade, rank.name), None)
    return list(roots)


def analyze_passes(cascade: Cascade, rank: str) -> PassAnalysis:
    """Pass analysis of one (logical) rank."""
    validate(cascade)
    parts = {r.name for r in cascade.ranks if root_rank(cascade, r.name) == rank}
    ready: dict[str, int] = {}  # tensor -> passes completed before its elements exist
    results: list[EinsumPass] = []
    touches: dict[str, set[int]] = {}

    def visit(einsum: Einsum, iteration: Iteration | None, carried_ok: bool, record: bool = True) -> None:
        bound = index_ranks(cascade, einsum, iteration)
        need = max((ready.get(a.tensor, 0) for a in einsum.reads()), default=0)
        traversed = {name for name, r in bound.items() if r in parts}
        traverses = bool(traversed)
        if traverses:
            number = need + 1
            kept = {n for i in einsum.output.indices for n in i.names()} & traversed
            if iteration is not None and einsum in iteration.body and iteration.rank in parts:
                kept.add(iteration.index)
            complete = not kept  # the output needs every coordinate of the rank
            out_ready = need + 1 if complete else need
            for access in [einsum.output, *einsum.reads()] if record else []:
                if set(cascade.tensor(access.tensor).rank_names) & parts:
                    touches.setdefault(access.tensor, set()).add(number)
        else:
            number, out_ready = need, need
        if record:
            results.append(EinsumPass(einsum.label, number, traverses))
        name = einsum.output.tensor
        ready[name] = max(ready.get(name, 0), out_ready) if carried_ok else out_ready

    for statement in cascade.statements:
        if isinstance(statement, Iteration):
            for einsum in statement.init:
                visit(einsum, statement, carried_ok=True)
            # A first sweep settles loop-carried reads of state written later in the body.
            for record in (False, True):
                for einsum in statement.body:
                    visit(einsum, statement, carried_ok=True, record=record)
            if statement.rank in parts:
                for name in {einsum.output.tensor for einsum in statement.einsums()}:
                    ready[name] = ready.get(name, 0) + 1
        else:
            visit(statement, None, carried_ok=False)
    passes = max((r.pass_number for r in results if r.traverses), default=0)
    tensor_passes = tuple(sorted((name, len(numbers)) for name, numbers in touches.items()))
    return PassAnalysis(rank, passes, tuple(results), tensor_passes)


def analyze_all(cascade: Cascade) -> dict[str, PassAnalysis]:
    """Pass analysis of every logical rank."""
    return {rank: analyze_passes(cascade, rank) for rank in logical_ranks(cascade)}


def max_passes(cascade: Cascade) -> int:
    return max((a.passes for a in analyze_all(cascade).values()), default=0)
