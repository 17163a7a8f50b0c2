"""Einsum-cascade IR: ranks, tensors, EDGE-style Einsums, iterative ranks and cascades.

Every node is a frozen dataclass, so cascades are values: transformations build new ones and
equality is structural (`parse(print(c)) == c`). Construction does not validate a whole
cascade; call `llmfab.compiler.validate.validate` (the parser and interpreter do).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from llmfab.compiler.formats import FLOAT32, Format
from llmfab.compiler.ir_errors import IRError


class Merge(enum.Enum):
    """Which points of an action are computed, given which operands are present (non-empty)."""

    INTERSECTION = "intersect"  # only where every operand is present
    UNION = "union"  # where any operand is present; an absent one acts as the op's identity
    RIGHT_NONZERO = "right"  # where the right operand is present and non-zero (masks, 2:4 indices)
    PASS_THROUGH = "pass"  # everywhere; absent operands read as the fill value 0


class ComputeOp(enum.Enum):
    """The compute of a map or reduce action."""

    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    MAX = "max"
    MIN = "min"
    TAKE_LEFT = "take_left"  # TeAAL take(a, b, 0): the left value
    TAKE_RIGHT = "take_right"  # TeAAL take(a, b, 1): the right value
    EXP = "exp"
    NEG = "neg"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    SIGMOID = "sigmoid"
    ROUND = "round"  # to the nearest integer, ties to even (as torch.round / numpy.rint)

    @property
    def arity(self) -> int:
        return 1 if self in _UNARY else 2

    @property
    def default_merge(self) -> Merge:
        """Merge implied when the text does not name one: ∩ for products, ∪ for sums and max."""
        if self in (ComputeOp.MUL, ComputeOp.DIV, ComputeOp.TAKE_LEFT, ComputeOp.TAKE_RIGHT):
            return Merge.INTERSECTION
        return Merge.UNION

    @property
    def identity(self) -> float:
        """Value an absent operand takes under a union merge (also the start of a reduction)."""
        return _IDENTITY.get(self, 0.0)


_UNARY = frozenset({ComputeOp.EXP, ComputeOp.NEG, ComputeOp.SQRT, ComputeOp.RSQRT, ComputeOp.SIGMOID, ComputeOp.ROUND})
_IDENTITY = {
    ComputeOp.MUL: 1.0,
    ComputeOp.DIV: 1.0,
    ComputeOp.MAX: float("-inf"),
    ComputeOp.MIN: float("inf"),
}
# Reductions: text name -> compute. Only associative, commutative computes may reduce.
REDUCE_OPS = {"sum": ComputeOp.ADD, "max": ComputeOp.MAX, "min": ComputeOp.MIN, "prod": ComputeOp.MUL}
REDUCE_NAMES = {op: name for name, op in REDUCE_OPS.items()}


@dataclass(frozen=True)
class Affine:
    """`sum(coeff * name) + constant`, canonical (terms sorted, no zero coefficients).

    Lower-case names are index variables; names that are ranks (upper-case first letter) stand
    for the rank's size, e.g. `RD[M1, p]` reads the final state of a recurrence over M1.
    """

    terms: tuple[tuple[str, int], ...] = ()
    constant: int = 0

    def __post_init__(self) -> None:
        merged: dict[str, int] = {}
        for name, coeff in self.terms:
            merged[name] = merged.get(name, 0) + coeff
        canonical = tuple(sorted((n, c) for n, c in merged.items() if c != 0))
        object.__setattr__(self, "terms", canonical)

    @staticmethod
    def var(name: str) -> Affine:
        return Affine(((name, 1),))

    @staticmethod
    def const(value: int) -> Affine:
        return Affine((), value)

    @property
    def plain_var(self) -> str | None:
        """The variable if this is exactly one index variable, else None."""
        if self.constant == 0 and len(self.terms) == 1 and self.terms[0][1] == 1 and self.terms[0][0][0].islower():
            return self.terms[0][0]
        return None

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.terms)

    def __add__(self, other: Affine) -> Affine:
        return Affine(self.terms + other.terms, self.constant + other.constant)

    def scaled(self, factor: int) -> Affine:
        return Affine(tuple((n, c * factor) for n, c in self.terms), self.constant * factor)

    def substitute(self, name: str, replacement: Affine) -> Affine:
        coeff = dict(self.terms).get(name, 0)
        if coeff == 0:
            return self
        rest = Affine(tuple(t for t in self.terms if t[0] != name), self.constant)
        return rest + replacement.scaled(coeff)


class CmpOp(enum.Enum):
    LT = "<"
    LE = "<="
    EQ = "=="
    NE = "!="
    GE = ">="
    GT = ">"


@dataclass(frozen=True)
class Comparison:
    left: Affine
    op: CmpOp
    right: Affine


@dataclass(frozen=True)
class Condition:
    """A rank filter or stopping condition: a union (or) of conjunctions (and) of comparisons."""

    clauses: tuple[tuple[Comparison, ...], ...]

    def __post_init__(self) -> None:
        if not self.clauses or not all(self.clauses):
            raise IRError("a condition needs at least one comparison in every 'or' branch")

    def names(self) -> set[str]:
        return {n for clause in self.clauses for c in clause for n in c.left.names() + c.right.names()}

    def substitute(self, name: str, replacement: Affine) -> Condition:
        return Condition(
            tuple(
                tuple(
                    Comparison(c.left.substitute(name, replacement), c.op, c.right.substitute(name, replacement))
                    for c in clause
                )
                for clause in self.clauses
            )
        )


class FilterShape(enum.Enum):
    """Shapes of rank filter the hardware knows; GENERAL is any other condition."""

    PREFIX = "prefix"  # k <= i (causal)
    WINDOW = "window"  # i - W < k <= i (sliding window); also i + c - W < k <= i + c
    LAMBDA = "lambda"  # k < S or i - W < k <= i (attention sinks + window); also with i + c
    GENERAL = "general"


def prefix_filter(k: str, i: str) -> Condition:
    """`k <= i`: each i sees coordinates up to itself (causal attention)."""
    return Condition(((Comparison(Affine.var(k), CmpOp.LE, Affine.var(i)),),))


def window_filter(k: str, i: str, width: int) -> Condition:
    """`i - width < k <= i`: each i sees the last `width` coordinates."""
    return Condition((_window(k, i, width),))


def lambda_filter(k: str, i: str, sinks: int, width: int) -> Condition:
    """`k < sinks or i - width < k <= i`: the Λ shape of sink tokens plus a sliding window."""
    sink = (Comparison(Affine.var(k), CmpOp.LT, Affine.const(sinks)),)
    return Condition((sink, _window(k, i, width)))


def _window(k: str, i: str, width: int) -> tuple[Comparison, ...]:
    if width < 1:
        raise IRError(f"window filter on {k}: the width must be at least 1, got {width}")
    low = Affine(((i, 1),), -width)
    return (Comparison(low, CmpOp.LT, Affine.var(k)), Comparison(Affine.var(k), CmpOp.LE, Affine.var(i)))


def filter_shape(condition: Condition) -> FilterShape:
    """Classify a filter as prefix, window or Λ (for hardware that implements only those)."""
    clauses = condition.clauses
    if len(clauses) == 1 and len(clauses[0]) == 1:
        c = clauses[0][0]
        if c.op is CmpOp.LE and c.left.plain_var and c.right.plain_var:
            return FilterShape.PREFIX
    if len(clauses) == 1 and _is_window(clauses[0]):
        return FilterShape.WINDOW
    if len(clauses) == 2 and len(clauses[0]) == 1 and _is_window(clauses[1]):
        sink = clauses[0][0]
        k = clauses[1][1].left
        if sink.op is CmpOp.LT and sink.left == k and not sink.right.terms:
            return FilterShape.LAMBDA
    return FilterShape.GENERAL


def _is_window(clause: tuple[Comparison, ...]) -> bool:
    """`i + c - W < k <= i + c` with W >= 1; c = 0 usually, c > 0 for a query at a fixed slot
    behind the keys (a decode step: the query sits at the last cache slot)."""
    if len(clause) != 2:
        return False
    low, high = clause
    k = high.left.plain_var
    query = high.right
    single = len(query.terms) == 1 and query.terms[0][1] == 1 and query.terms[0][0][0].islower()
    return (
        bool(k and single)
        and low.op is CmpOp.LT
        and high.op is CmpOp.LE
        and low.right == high.left
        and low.left.terms == query.terms
        and low.left.constant < query.constant
    )


# ---------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Access:
    """A tensor read or write: `T[i, j + 1, 0]`; one affine index per declared rank."""

    tensor: str
    indices: tuple[Affine, ...]

    def index_names(self) -> set[str]:
        return {n for index in self.indices for n in index.names()}


@dataclass(frozen=True)
class Unary:
    op: ComputeOp
    operand: Expr


@dataclass(frozen=True)
class Binary:
    op: ComputeOp
    left: Expr
    right: Expr
    merge: Merge


Expr = Union[Const, Access, Unary, Binary]


def accesses(expr: Expr) -> list[Access]:
    """Tensor reads of an expression, left to right."""
    if isinstance(expr, Access):
        return [expr]
    if isinstance(expr, Unary):
        return accesses(expr.operand)
    if isinstance(expr, Binary):
        return accesses(expr.left) + accesses(expr.right)
    return []


# ---------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Reduction:
    """Reduce action on one index: combine the points that differ only in `index`."""

    index: str
    op: ComputeOp = ComputeOp.ADD
    merge: Merge = Merge.UNION


@dataclass(frozen=True)
class Einsum:
    """`output = expr` over the iteration space of every index it mentions.

    `reductions` lists the reduced indices innermost first; `where` filters the iteration space.
    `loop_order` (outermost first) and `fusion_group` are mapping annotations: they never change
    what is computed, only how a later stage schedules it.
    """

    output: Access
    expr: Expr
    reductions: tuple[Reduction, ...] = ()
    where: Condition | None = None
    loop_order: tuple[str, ...] | None = None
    fusion_group: int | None = None

    @property
    def label(self) -> str:
        """Name used in messages and reports: the output access, e.g. `RM[m1 + 1, p]`."""
        from llmfab.compiler.printer import format_access

        return format_access(self.output)

    def reads(self) -> list[Access]:
        return accesses(self.expr)

    def index_names(self) -> list[str]:
        """Index variables in order of first appearance (output, operands, filter)."""
        seen: dict[str, None] = {}
        for access in [self.output, *self.reads()]:
            for index in access.indices:
                for name in index.names():
                    seen.setdefault(name, None)
        for name in sorted(self.where.names()) if self.where else ():
            seen.setdefault(name, None)
        for reduction in self.reductions:
            seen.setdefault(reduction.index, None)
        return list(seen)


@dataclass(frozen=True)
class Iteration:
    """An iterative rank: run `init` once, then `body` for index = 0, 1, ... of `rank`.

    The loop stops before the first value for which `until` holds, or at the rank's size.
    Inside the body `index` is fixed; recurrences write state at `index + 1` and read `index`.
    """

    index: str
    rank: str
    body: tuple[Einsum, ...]
    init: tuple[Einsum, ...] = ()
    until: Condition | None = None

    def einsums(self) -> tuple[Einsum, ...]:
        return self.init + self.body


Statement = Union[Einsum, Iteration]


@dataclass(frozen=True)
class Rank:
    """A rank (dimension) with its size; None means symbolic (bound from input arrays).

    `part_of` names the rank this one was partitioned from (M1 and M0 are parts of M).
    """

    name: str
    size: int | None = None
    part_of: str | None = None


@dataclass(frozen=True)
class TensorRank:
    """One rank of a tensor; `extra` > 0 extends it (recurrence state `RM[M1 + 1, P]`)."""

    rank: str
    extra: int = 0


@dataclass(frozen=True)
class Tensor:
    name: str
    ranks: tuple[TensorRank, ...]
    format: Format = FLOAT32

    @property
    def rank_names(self) -> tuple[str, ...]:
        return tuple(r.rank for r in self.ranks)


@dataclass(frozen=True)
class Cascade:
    """Ranks, tensor declarations and an ordered list of statements (a DAG of Einsums)."""

    ranks: tuple[Rank, ...]
    tensors: tuple[Tensor, ...]
    statements: tuple[Statement, ...]

    def rank(self, name: str) -> Rank:
        for rank in self.ranks:
            if rank.name == name:
                return rank
        raise IRError(f"rank {name} is not declared; add `rank {name} = <size>`")

    def tensor(self, name: str) -> Tensor:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise IRError(f"tensor {name} is not declared; add `tensor {name}[<ranks>]`")

    def has_tensor(self, name: str) -> bool:
        return any(t.name == name for t in self.tensors)

    def einsums(self) -> list[tuple[Einsum, Iteration | None]]:
        """Every Einsum in execution order, with the iteration it belongs to (or None)."""
        found: list[tuple[Einsum, Iteration | None]] = []
        for statement in self.statements:
            if isinstance(statement, Iteration):
                found.extend((einsum, statement) for einsum in statement.einsums())
            else:
                found.append((statement, None))
        return found

    def written(self) -> set[str]:
        return {einsum.output.tensor for einsum, _ in self.einsums()}

    def inputs(self) -> list[str]:
        written = self.written()
        return [t.name for t in self.tensors if t.name not in written]

    def outputs(self) -> list[str]:
        """Tensors written and never read: the results of the cascade."""
        read = {a.tensor for einsum, _ in self.einsums() for a in einsum.reads()}
        written = self.written()
        return [t.name for t in self.tensors if t.name in written and t.name not in read]

    def replace_statements(self, statements) -> Cascade:
        return Cascade(self.ranks, self.tensors, tuple(statements))
