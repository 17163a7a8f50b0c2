"""Reference interpreter: runs any cascade on numpy arrays, slowly and exactly as written.

This is the semantic ground truth for every transformation. Semantics (see docs/ir.md):

* Every tensor element is present or absent (empty). Inputs are fully present; elements no
  Einsum writes, reads outside a tensor's extent and points removed by a filter are absent.
* A map action computes a point where its merge says so (∩, ∪, right-nonzero, pass-through);
  under ∪ an absent operand takes the identity of the compute (0 for + and -, 1 for * and /,
  -inf for max, +inf for min); under pass-through it reads the fill value 0.
* Reductions fold the points of one index sequentially in coordinate order, innermost listed
  first. Absent elements are stored as 0 in the returned arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.compiler.ir import (
    Access,
    Affine,
    Binary,
    Cascade,
    CmpOp,
    ComputeOp,
    Condition,
    Const,
    Einsum,
    Expr,
    Iteration,
    Merge,
    Unary,
)
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.validate import index_ranks, iteration_space, validate


@dataclass(frozen=True)
class TensorValue:
    """Values (absent elements hold 0) and the mask of present elements."""

    values: np.ndarray
    present: np.ndarray


def run(cascade: Cascade, inputs: dict[str, np.ndarray], dtype=np.float64) -> dict[str, np.ndarray]:
    """Execute the cascade; return every written tensor, axes in declared rank order."""
    return {name: value.values for name, value in run_with_presence(cascade, inputs, dtype).items()}


def run_with_presence(cascade: Cascade, inputs: dict[str, np.ndarray], dtype=np.float64) -> dict[str, TensorValue]:
    validate(cascade)
    return _Machine(cascade, inputs, dtype).execute()


def rank_sizes(cascade: Cascade, inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """Declared rank sizes, with symbolic ones bound from the input arrays' shapes."""
    sizes = {r.name: r.size for r in cascade.ranks}
    origin = {r.name: "its declaration" for r in cascade.ranks if r.size is not None}
    input_names = cascade.inputs()
    for name in inputs:
        if name not in input_names:
            raise IRError(f"input {name} is not an input of the cascade (inputs: {', '.join(input_names)})")
    for name in input_names:
        if name not in inputs:
            raise IRError(f"input tensor {name} is missing; pass an array for it")
        tensor, shape = cascade.tensor(name), np.shape(inputs[name])
        if len(shape) != len(tensor.ranks):
            raise IRError(f"input {name} has {len(shape)} axes but its declaration has ranks "
                          f"{', '.join(tensor.rank_names) or '(none)'}")
        for extent, tensor_rank in zip(shape, tensor.ranks):
            size = extent - tensor_rank.extra
            rank = tensor_rank.rank
            if sizes[rank] is None:
                sizes[rank], origin[rank] = size, f"input {name}"
            elif sizes[rank] != size:
                raise IRError(f"rank {rank} has size {sizes[rank]} from {origin[rank]} but input {name} "
                              f"gives it size {size}; make the shapes agree")
    missing = [name for name, size in sizes.items() if size is None]
    if missing:
        raise IRError(f"ranks {', '.join(missing)} have no size; declare `rank {missing[0]} = <size>`")
    return sizes


class _Machine:
    def __init__(self, cascade: Cascade, inputs: dict[str, np.ndarray], dtype) -> None:
        self.cascade = cascade
        self.dtype = dtype
        self.sizes = rank_sizes(cascade, inputs)
        self.values: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.written: dict[str, np.ndarray] = {}
        for tensor in cascade.tensors:
            shape = tuple(self.sizes[r.rank] + r.extra for r in tensor.ranks)
            if tensor.name in inputs:
                self.values[tensor.name] = np.array(inputs[tensor.name], dtype=dtype)
                self.present[tensor.name] = np.ones(shape, dtype=bool)
            else:
                self.values[tensor.name] = np.zeros(shape, dtype=dtype)
                self.present[tensor.name] = np.zeros(shape, dtype=bool)
                self.written[tensor.name] = np.zeros(shape, dtype=bool)

    def execute(self) -> dict[str, TensorValue]:
        for statement in self.cascade.statements:
            if isinstance(statement, Iteration):
                self.iterate(statement)
            else:
                self.einsum(statement, None, {})
        return {name: TensorValue(self.values[name], self.present[name]) for name in self.written}

    def iterate(self, iteration: Iteration) -> None:
        for einsum in iteration.init:
            self.einsum(einsum, iteration, {})
        for step in range(self.sizes[iteration.rank]):
            env = {iteration.index: step}
            if iteration.until is not None and bool(self.condition(iteration.until, env)):
                break
            for einsum in iteration.body:
                self.einsum(einsum, iteration, env)

    # ------------------------------------------------------------------ one Einsum
    def einsum(self, einsum: Einsum, iteration: Iteration | None, fixed: dict[str, int]) -> None:
        ranks = index_ranks(self.cascade, einsum, iteration)
        space = iteration_space(self.cascade, einsum, iteration)
        shape = tuple(self.sizes[ranks[name]] for name in space)
        env: dict[str, object] = dict(fixed)
        for axis, name in enumerate(space):
            env[name] = np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(space))])
        with np.errstate(all="ignore"):
            values, present = self.expr(einsum.expr, env)
            if einsum.where is not None:
                present = present & self.condition(einsum.where, env)
            present = np.broadcast_to(present, shape)
            values = np.where(present, np.broadcast_to(values, shape), 0.0).astype(self.dtype)
            axes = list(space)
            for reduction in einsum.reductions:
                axis = axes.index(reduction.index)
                values, present = _reduce(values, present, axis, reduction.op, reduction.merge)
                axes.pop(axis)
        self.write(einsum, axes, values, present, fixed)

    def write(self, einsum: Einsum, axes: list[str], values, present, fixed: dict[str, int]) -> None:
        env: dict[str, object] = dict(fixed)
        for axis, name in enumerate(axes):
            env[name] = np.arange(values.shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(axes))])
        name = einsum.output.tensor
        target = self.values[name]
        index = [np.broadcast_to(self.affine(i, env), values.shape) for i in einsum.output.indices]
        for position, idx in enumerate(index):
            if idx.size and (idx.min() < 0 or idx.max() >= target.shape[position]):
                raise IRError(f"Einsum {einsum.label} writes outside {name} (rank {position} has extent "
                              f"{target.shape[position]}); check the output indices")
        key = tuple(index)
        if np.any(self.written[name][key]):
            raise IRError(f"Einsum {einsum.label} overwrites elements of {name} already written; "
                          "each element may be written once (single assignment)")
        self.written[name][key] = True
        target[key] = values
        self.present[name][key] = present

    # ------------------------------------------------------------------ expressions
    def expr(self, expr: Expr, env):
        if isinstance(expr, Const):
            return np.asarray(expr.value, dtype=self.dtype), np.asarray(True)
        if isinstance(expr, Access):
            return self.read(expr, env)
        if isinstance(expr, Unary):
            values, present = self.expr(expr.operand, env)
            return np.where(present, _UNARY[expr.op](values), 0.0), present
        assert isinstance(expr, Binary)
        left, left_present = self.expr(expr.left, env)
        right, right_present = self.expr(expr.right, env)
        identity = expr.op.identity
        if expr.merge is Merge.INTERSECTION:
            present = left_present & right_present
        elif expr.merge is Merge.UNION:
            present = left_present | right_present
            left, right = np.where(left_present, left, identity), np.where(right_present, right, identity)
        elif expr.merge is Merge.RIGHT_NONZERO:
            present = right_present & (right != 0)
            left = np.where(left_present, left, identity)
        else:
            present = np.asarray(True)
        values = _BINARY[expr.op](left, right)
        return np.where(present, values, 0.0), present

    def read(self, access: Access, env):
        array, mask = self.values[access.tensor], self.present[access.tensor]
        index = [self.affine(i, env) for i in access.indices]
        if not index:
            return array, mask
        index = np.broadcast_arrays(*[np.asarray(i) for i in index])
        inside = np.ones(index[0].shape, dtype=bool)
        for position, idx in enumerate(index):
            inside &= (idx >= 0) & (idx < array.shape[position])
        clipped = tuple(np.clip(idx, 0, array.shape[p] - 1) for p, idx in enumerate(index))
        present = mask[clipped] & inside
        return np.where(present, array[clipped], 0.0), present

    def affine(self, affine: Affine, env):
        total = affine.constant
        for name, coeff in affine.terms:
            total = total + coeff * (self.sizes[name] if name[0].isupper() else env[name])
        return total

    def condition(self, condition: Condition, env):
        result = np.asarray(False)
        for clause in condition.clauses:
            part = np.asarray(True)
            for comparison in clause:
                part = part & _CMP[comparison.op](self.affine(comparison.left, env), self.affine(comparison.right, env))
            result = result | part
        return result


def _reduce(values, present, axis: int, op: ComputeOp, merge: Merge):
    """Fold one axis sequentially (coordinate order), honouring the reduce merge."""
    combine = _BINARY[op]
    if merge is Merge.PASS_THROUGH:
        contributing = np.ones_like(present)
    else:
        contributing = present
    start = np.full(np.delete(values.shape, axis), op.identity, dtype=values.dtype)
    accumulator = start
    for coordinate in range(values.shape[axis]):
        point = np.take(values, coordinate, axis=axis)
        accumulator = np.where(np.take(contributing, coordinate, axis=axis), combine(accumulator, point), accumulator)
    if merge is Merge.INTERSECTION:
        out_present = np.all(present, axis=axis)
    elif merge is Merge.UNION:
        out_present = np.any(present, axis=axis)
    else:
        out_present = np.ones(accumulator.shape, dtype=bool)
    return np.where(out_present, accumulator, 0.0), out_present


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_UNARY = {
    ComputeOp.EXP: np.exp,
    ComputeOp.NEG: np.negative,
    ComputeOp.SQRT: np.sqrt,
    ComputeOp.RSQRT: lambda x: 1.0 / np.sqrt(x),
    ComputeOp.SIGMOID: _sigmoid,
    ComputeOp.ROUND: np.rint,
}
_BINARY = {
    ComputeOp.ADD: np.add,
    ComputeOp.SUB: np.subtract,
    ComputeOp.MUL: np.multiply,
    ComputeOp.DIV: np.divide,
    ComputeOp.MAX: np.maximum,
    ComputeOp.MIN: np.minimum,
    ComputeOp.TAKE_LEFT: lambda a, b: np.broadcast_arrays(a, b)[0],
    ComputeOp.TAKE_RIGHT: lambda a, b: np.broadcast_arrays(a, b)[1],
}
_CMP = {
    CmpOp.LT: np.less,
    CmpOp.LE: np.less_equal,
    CmpOp.EQ: np.equal,
    CmpOp.NE: np.not_equal,
    CmpOp.GE: np.greater_equal,
    CmpOp.GT: np.greater,
}
