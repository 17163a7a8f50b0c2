"""IR additions the lowering needs: round, index formats, wider int formats, offset Λ filters."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.formats import Format, FormatKind
from llmfab.compiler.interpreter import run
from llmfab.compiler.ir import Affine, FilterShape, filter_shape, lambda_filter, window_filter
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.printer import print_cascade

A8 = """\
rank H = 6
rank P = 2
tensor X[H, P] : float32
tensor XA[P] : float32
tensor XS[P] : float32
tensor XC[H, P] : int8(scale=token)
tensor M[H, P] : index3(sparse=2:4)
tensor Z[H, P] : int32
XA[p] = max(X[h, p], -X[h, p]) reduce h: max
XS[p] = max(XA[p] / 127.0, 1.1754943508222875e-38)
XC[h, p] = max(min(round(X[h, p] / XS[p]), 127.0), -127.0)
Z[h, p] = XC[h, p] *{right} M[h, p]
"""


def test_round_is_half_to_even_and_round_trips():
    cascade = parse_cascade(A8)
    assert parse_cascade(print_cascade(cascade)) == cascade
    x = np.array([[0.5, 0.0], [1.5, 0.0], [2.5, 0.0], [-0.5, 0.0], [127.0, 0.0], [-3.49, 0.0]])
    mask = np.ones_like(x)
    out = run(cascade, {"X": x, "M": mask})
    assert out["XC"][:, 0].tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -3.0]
    assert out["XC"][:, 1].tolist() == [0.0] * 6  # an all-zero token stays zero


def test_index_and_int_formats():
    assert Format.make(FormatKind.INDEX, 3, sparse="2:4").spelling() == "index3(sparse=2:4)"
    assert Format.make(FormatKind.INDEX, 16, select="onehot").spelling() == "index16(select=onehot)"
    assert Format.make(FormatKind.INT, 2).spelling() == "int2"
    with pytest.raises(IRError, match="parameter"):
        Format.make(FormatKind.INDEX, 3, scale="token")


def test_window_and_lambda_with_the_query_at_an_offset():
    decode = lambda_filter("m", "p", 4, 8).substitute("p", Affine((("p", 1),), 11))
    assert filter_shape(decode) is FilterShape.LAMBDA
    assert filter_shape(window_filter("m", "p", 3).substitute("p", Affine((("p", 1),), 5))) is FilterShape.WINDOW
