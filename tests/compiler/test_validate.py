"""Validation errors name the tensor or Einsum and say what to do."""

import pytest

from llmfab.compiler.ir import Access, Affine, Cascade, ComputeOp, Const, Einsum, Rank, Tensor, TensorRank, Unary
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.validate import validate

HEAD = "rank M = 2\nrank N = 3\nrank K = 5\ntensor A[M, K]\ntensor B[K, N]\ntensor Z[M, N]\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("Z[m, n] = A[m, k] * C[k, n]", "reads tensor C, which is not declared; add `tensor C"),
        ("Y[m] = A[m, k]", "writes tensor Y, which is not declared"),
        ("Z[m, n] = A[m, n] * B[n, n]", "index n ranges over rank N .* and rank K .*two sizes"),
        ("Z[m, n] = A[m, k] reduce k: sum", "output index n is not in the iteration space"),
        ("Z[m, n] = A[m, k, n] * B[k, n]", "A has 2 ranks \\(M, K\\) but is indexed with 3"),
        ("Z[m, n] = A[m, k] * B[k, n] reduce k: sum, k: max", "reduced twice"),
        ("Z[m, n] = A[m, k] * B[k, n] reduce m: sum", "cannot reduce index m"),
        ("Z[m, n] = A[m, k] * B[j, n] reduce k: sum", "index j is neither in the output nor reduced"),
        ("Z[m, n] = A[m, k] * B[k, n] reduce k: sum{right}", "right-nonzero merge needs two operands"),
        ("Z[m, n] = A[m, k] * B[k, n] order (m, n)", "loop order \\(m, n\\) must list each index"),
        ("Z[m, n] = A[m, k] * B[k, n] where k < X", "rank X is not declared"),
        ("Z[m, n] = A[m + 1, k] * B[k, n]", None),
        ("Z[m, m] = A[m, k] * B[k, m]", "two sizes"),
    ],
)
def test_einsum_errors(body, message):
    if message is None:
        parse_cascade(HEAD + body + "\n")  # affine reads outside the tensor are allowed (absent)
        return
    with pytest.raises(IRError, match=message):
        parse_cascade(HEAD + body + "\n")


def test_cycle_is_reported_with_path():
    text = HEAD + "tensor T[M, N]\nZ[m, n] = T[m, n] + B[k, n] reduce k: sum\nT[m, n] = Z[m, n] * 2.0\n"
    with pytest.raises(IRError, match="cycle between Einsums: Z -> T -> Z"):
        parse_cascade(text)


def test_self_read_outside_iteration_is_a_cycle():
    with pytest.raises(IRError, match="reads its own output Z"):
        parse_cascade(HEAD + "Z[m, n] = Z[m, n] + 1.0\n")


def test_read_before_write_without_cycle():
    text = HEAD + "tensor T[M, N]\nZ[m, n] = T[m, n] * 2.0\nT[m, n] = A[m, k] * B[k, n]\n"
    with pytest.raises(IRError, match="reads T before any Einsum writes it; move it after"):
        parse_cascade(text)


def test_declaration_errors():
    with pytest.raises(IRError, match="rank M is declared twice"):
        parse_cascade("rank M = 2\nrank M = 3\n")
    with pytest.raises(IRError, match="uses rank Q, which is not declared; add `rank Q"):
        parse_cascade("tensor A[Q]\n")
    with pytest.raises(IRError, match="tensor A is declared twice"):
        parse_cascade("rank M\ntensor A[M]\ntensor A[M]\n")
    with pytest.raises(IRError, match="init statements must come before"):
        parse_cascade("rank M = 2\ntensor S[M + 1]\niterate i over M {\n S[i + 1] = S[i] + 1.0\n init S[0] = 0.0\n}\n")


def test_programmatic_arity_mismatch():
    cascade = Cascade(
        (Rank("M", 2),),
        (Tensor("A", (TensorRank("M"),)), Tensor("B", (TensorRank("M"),))),
        (Einsum(Access("B", (Affine.var("m"),)), Unary(ComputeOp.ADD, Const(1.0))),),
    )
    with pytest.raises(IRError, match="Einsum B\\[m\\]: add takes 2 operands but is applied to 1"):
        validate(cascade)


def test_recurrence_inside_iteration_is_not_a_cycle():
    text = (
        "rank I = 4\ntensor X[I]\ntensor S[I + 1]\n"
        "iterate i over I {\n  init S[0] = 0.0\n  S[i + 1] = S[i] + X[i]\n}\n"
    )
    parse_cascade(text)
    with pytest.raises(IRError, match="init statements run once"):
        parse_cascade(text.replace("init S[0] = 0.0", "init S[i] = 0.0"))
