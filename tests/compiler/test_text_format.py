"""IR text format: printing, parsing, round trips and error positions."""

import pytest

from llmfab.compiler.cascade_files import EXAMPLES, load_cascade
from llmfab.compiler.formats import FormatKind, kv_cache, weight_groupwise
from llmfab.compiler.ir import (
    Binary,
    ComputeOp,
    Const,
    FilterShape,
    Merge,
    Unary,
    filter_shape,
    lambda_filter,
    prefix_filter,
    window_filter,
)
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade, parse_einsum
from llmfab.compiler.printer import format_condition, format_expr, print_cascade
from llmfab.errors import InputError

MATMUL = """\
rank K = 3
rank M = 2
rank N = 4
tensor A[K, M] : weight2(group=64, sparse=2:4)
tensor B[K, N] : int8(scale=token)
tensor Z[M, N]
Z[m, n] = A[k, m] * B[k, n]
"""


def test_defaults_are_filled_in_and_printed_explicitly():
    cascade = parse_cascade(MATMUL)
    einsum = cascade.statements[0]
    assert [(r.index, r.op, r.merge) for r in einsum.reductions] == [("k", ComputeOp.ADD, Merge.UNION)]
    assert einsum.expr.merge is Merge.INTERSECTION
    text = print_cascade(cascade)
    assert "Z[m, n] = A[k, m] * B[k, n] reduce k: sum" in text
    assert "tensor Z[M, N] : float32" in text
    assert parse_cascade(text) == cascade


def test_formats_carry_their_parameters():
    a, b = parse_cascade(MATMUL).tensors[:2]
    assert a.format == weight_groupwise(2, 64, (2, 4))
    assert a.format.group_size == 64 and a.format.sparsity == (2, 4)
    assert b.format.kind is FormatKind.INT and b.format.param("scale") == "token"
    assert kv_cache(4).spelling() == "kv4(scale=token)"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("tensor A[K] : float7", "float7 does not exist"),
        ("tensor A[K] : weight2(group=0)", "positive integer"),
        ("tensor A[K] : weight2(sparse=4:2)", "N:M"),
        ("tensor A[K] : int8(color=red)", "no parameter 'color'"),
        ("tensor A[K] : bfloat16", "unknown element format"),
    ],
)
def test_bad_formats_are_rejected_with_position(bad, message):
    with pytest.raises(IRError, match=message) as info:
        parse_cascade("rank K = 2\n" + bad + "\n")
    assert str(info.value).startswith("<text>:2:")


def test_examples_round_trip_and_match_builders():
    from llmfab.compiler.attention import one_pass_attention, three_pass_attention

    three = load_cascade(EXAMPLES / "attention_3pass.cascade")
    one = load_cascade(EXAMPLES / "attention_1pass.cascade")
    assert three == three_pass_attention(8, 4, 4, 4, scale=0.5)
    assert one == one_pass_attention(8, 8, 4, 4, 2, scale=0.5, mask=lambda_filter("m", "p", 1, 4))
    for cascade in (three, one):
        assert parse_cascade(print_cascade(cascade)) == cascade


@pytest.mark.parametrize(
    "expr",
    [
        "A[i] - (B[i] - C[i])",
        "A[i] - B[i] - C[i]",
        "A[i] / (B[i] * C[i])",
        "-(A[i] + B[i]) * -1.5",
        "-(2.0) + -inf + inf + 1e-05",
        "max{intersect}(A[i], B[i]) +{pass} take(A[i], B[i], 1) *{right} C[i]",
        "exp(A[i] -{intersect} B[i]) / sqrt(rsqrt(sigmoid(C[i])))",
        "take(A[i], B[i], 0) + min(A[i], --A[i])",
    ],
)
def test_expressions_round_trip(expr):
    einsum = parse_einsum(f"Z[i] = {expr}")
    again = parse_einsum(f"Z[i] = {format_expr(einsum.expr)}")
    assert again == einsum


def test_precedence_and_negative_constants():
    expr = parse_einsum("Z[i] = A[i] - B[i] * -2.0").expr
    assert expr == Binary(ComputeOp.SUB, expr.left, Binary(ComputeOp.MUL, expr.right.left, Const(-2.0),
                                                           Merge.INTERSECTION), Merge.UNION)
    assert parse_einsum("Z[i] = -(1.0)").expr == Unary(ComputeOp.NEG, Const(1.0))


def test_filters_print_as_chains_and_classify():
    assert format_condition(prefix_filter("k", "i")) == "k <= i"
    assert format_condition(window_filter("k", "i", 4)) == "i - 4 < k <= i"
    assert format_condition(lambda_filter("k", "i", 2, 4)) == "k < 2 or i - 4 < k <= i"
    assert filter_shape(prefix_filter("k", "i")) is FilterShape.PREFIX
    assert filter_shape(window_filter("k", "i", 3)) is FilterShape.WINDOW
    assert filter_shape(lambda_filter("k", "i", 1, 3)) is FilterShape.LAMBDA
    parsed = parse_einsum("Z[i] = A[k] where k < 2 or i - 4 < k and k <= i").where
    assert parsed == lambda_filter("k", "i", 2, 4)
    assert filter_shape(parse_einsum("Z[i] = A[k] where k != i").where) is FilterShape.GENERAL


@pytest.mark.parametrize(
    "text, position, message",
    [
        ("rank M = 2\ntensor A[M]\nB[m] = A[m] +* 2\n", "3:14", "expected a tensor"),
        ("rank M = 2\ntensor A[M\n", "2:11", "expected ']'"),
        ("rank m = 2\n", "1:6", "upper-case"),
        ("rank M = 2\ntensor A[M]\nA[m] = foo(A[m])\n", "3:8", "unknown function"),
        ("rank M = 2\ntensor A[M]\nA[m] = max(A[m])\n", "3:8", "takes 2 operands"),
        ("rank M = 2\ntensor A[M]\nA[m] = A[m] reduce m: mean\n", "3:23", "unknown reduction"),
        ("rank M = 2\ntensor A[M]\nA[m] = A[m] *{both} A[m]\n", "3:15", "unknown merge"),
        ("iterate i over M {\nA[i] = 1.0\n", "3:1", "not closed"),
        ("rank M = 2.5\n", "1:10", "whole number"),
        ("rank M = 2 $\n", "1:12", "unexpected character"),
    ],
)
def test_syntax_errors_have_line_and_column(text, position, message):
    with pytest.raises(IRError, match=message) as info:
        parse_cascade(text, "f.cascade")
    assert str(info.value).startswith(f"f.cascade:{position}:")
    assert isinstance(info.value, InputError)


def test_empty_loop_order_round_trips():
    cascade = parse_cascade("tensor S[]\ntensor T[]\nT[] = S[] * 2.0 order ()\n")
    assert cascade.statements[0].loop_order == ()
    assert parse_cascade(print_cascade(cascade)) == cascade
