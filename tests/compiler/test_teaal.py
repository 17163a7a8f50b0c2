"""TeAAL YAML import and export."""

import numpy as np
import pytest
import yaml

from llmfab.compiler.attention import one_pass_attention, three_pass_attention
from llmfab.compiler.interpreter import run
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.teaal import from_teaal, to_teaal

SPEC = """\
einsum:
  declaration:
    A: [K, M]
    B: [K, N]
    C: [M, N]
    T: [M, N]
    Z: [M, N]
  expressions:
    - T[m, n] = A[k, m] * B[k, n]
    - Z[m, n] = take(T[m, n], C[m, n], 0) + C[m, n]
mapping:
  loop-order:
    T: [N, K, M]
"""
SIZES = {"K": 2, "M": 3, "N": 2}


def test_import_runs_and_round_trips():
    cascade = from_teaal(SPEC, rank_sizes=SIZES)
    assert cascade.statements[0].loop_order == ("n", "k", "m")
    assert from_teaal(to_teaal(cascade), rank_sizes=SIZES) == cascade
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(2, 3)), rng.normal(size=(2, 2)), rng.normal(size=(3, 2))
    np.testing.assert_allclose(run(cascade, {"A": a, "B": b, "C": c})["Z"], a.T @ b + c, rtol=1e-12)
    document = yaml.safe_load(to_teaal(cascade))
    assert document["einsum"]["expressions"][1] == "Z[m, n] = take(T[m, n], C[m, n], 0) + C[m, n]"


def test_export_of_ir_text_matches_teaal_shape():
    text = "rank K = 2\nrank M = 2\ntensor A[K, M]\ntensor Z[M]\nZ[m] = A[k, m] * A[k, m]\n"
    document = yaml.safe_load(to_teaal(parse_cascade(text)))
    assert document == {"einsum": {"declaration": {"A": ["K", "M"], "Z": ["M"]},
                                   "expressions": ["Z[m] = A[k, m] * A[k, m]"]}}


@pytest.mark.parametrize(
    "body, construct",
    [
        ("Z[m] = exp(A[m])", "no exp\\(\\)"),
        ("Z[m] = A[m] - A[m]", "not sub"),
        ("Z[m] = A[m] / A[m]", "not div"),
        ("Z[m] = max(A[m], A[m])", "not max"),
        ("Z[m] = A[m] *{union} A[m]", "not mul \\(union\\)"),
        ("Z[m] = A[m] * 2.0", "no constants"),
        ("Z[m] = A[m] where m <= 1", "no rank filters"),
    ],
)
def test_export_outside_the_subset_names_einsum_and_construct(body, construct):
    cascade = parse_cascade(f"rank M = 2\ntensor A[M]\ntensor Z[M]\n{body}\n")
    with pytest.raises(IRError, match=f"Einsum Z\\[m\\]: TeAAL .*{construct}"):
        to_teaal(cascade)


def test_export_refuses_reductions_iterations_and_foreign_indices():
    with pytest.raises(IRError, match="GM\\[p\\]: TeAAL reduces only by sum"):
        to_teaal(parse_cascade("rank M = 2\nrank P = 2\ntensor QK[M, P]\ntensor GM[P]\nGM[p] = QK[m, p] reduce m: max\n"))
    with pytest.raises(IRError, match="iterative rank `iterate m1 over M1`"):
        to_teaal(one_pass_attention(4, 2, 2, 2, 2))
    with pytest.raises(IRError, match="QK\\[m, p\\]: TeAAL expressions have no constants"):
        to_teaal(three_pass_attention(4, 2, 2, 2))
    with pytest.raises(IRError, match="indexes rank M of A with m"):
        to_teaal(parse_cascade("rank M = 2\ntensor A[M]\ntensor Z[M]\nZ[m] = A[m + 1]\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("einsum: [1, 2]", "expected an `einsum:` section"),
        ("einsum:\n  declaration: {A: [K]}\n  expressions: 3\n", "must be a list of strings"),
        ("einsum:\n  declaration: {A: [K]}\n  expressions: ['Z[k] = A[k]']\n", "writes tensor Z, which is not declared"),
        ("einsum:\n  declaration: {A: [K], Z: [K]}\n  expressions: ['Z[k] = exp(A[k])']\n", "no exp"),
        ("einsum:\n  declaration: {A: [K], Z: [K]}\n  expressions: ['Z[k] = A[k] +']\n", "expression 1:1:14"),
        ("einsum: {declaration: {A: [K]}, expressions: []}\n: :", "not valid YAML"),
    ],
)
def test_import_errors(text, message):
    with pytest.raises(IRError, match=message):
        from_teaal(text, "spec.yaml")
