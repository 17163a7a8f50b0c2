"""Fusion grouping, rank partitioning and loop order, each checked against the interpreter."""

import numpy as np
import pytest

from llmfab.compiler.attention import one_pass_attention, three_pass_attention
from llmfab.compiler.interpreter import run
from llmfab.compiler.ir import prefix_filter
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.printer import print_cascade
from llmfab.compiler.transforms import RankSplit, group_by_pass, set_loop_order


def attention_inputs(rng, m=8, p=8, e=4, f=3):
    return {"Q": rng.normal(size=(e, p)), "K": rng.normal(size=(e, m)), "V": rng.normal(size=(f, m))}


def test_group_by_pass_on_three_pass_attention():
    cascade = three_pass_attention(8, 8, 4, 3, 0.5, prefix_filter("m", "p"))
    grouped, groups = group_by_pass(cascade, "M")
    assert [g.describe() for g in groups] == [
        "group 0 (pass 1): QK[m, p], GM[p]",
        "group 1 (pass 2): SN[m, p], SD[p]",
        "group 2 (pass 3): A[m, p], AV[f, p]",
    ]
    assert [e.fusion_group for e in grouped.statements] == [0, 0, 1, 1, 2, 2]
    assert parse_cascade(print_cascade(grouped)) == grouped
    inputs = attention_inputs(np.random.default_rng(0))
    assert np.array_equal(run(grouped, inputs)["AV"], run(cascade, inputs)["AV"])


def test_group_by_pass_reorders_interleaved_statements():
    text = (
        "rank K = 3\ntensor A[K]\ntensor S[]\ntensor D[K]\ntensor E[K]\n"
        "S[] = A[k] reduce k: max\nD[k] = A[k] - S[]\nE[k] = exp(A[k])\n"
    )
    cascade = parse_cascade(text)
    grouped, groups = group_by_pass(cascade, "K")
    assert [e.output.tensor for e in grouped.statements] == ["S", "E", "D"]
    assert len(groups) == 2
    inputs = {"A": np.array([0.5, -1.0, 2.0])}
    result, expected = run(grouped, inputs), run(cascade, inputs)
    assert all(np.array_equal(result[name], expected[name]) for name in expected)


def test_group_by_pass_keeps_one_pass_attention_in_one_group():
    _, groups = group_by_pass(one_pass_attention(8, 4, 4, 4, 2), "M")
    assert [(g.pass_number, g.traverses, len(g.einsums)) for g in groups] == [(1, True, 11), (1, False, 1)]


@pytest.mark.parametrize("tile", [1, 2, 4, 8])
def test_split_rank_preserves_attention(tile):
    cascade = three_pass_attention(8, 8, 4, 3, 0.5, prefix_filter("m", "p"))
    split = RankSplit("M", tile)
    tiled = split.apply(cascade)
    assert [r.name for r in tiled.ranks][:2] == ["M1", "M0"]
    assert tiled.tensor("K").rank_names == ("E", "M1", "M0")
    inputs = attention_inputs(np.random.default_rng(tile))
    expected = run(cascade, inputs)
    got = split.merge_arrays(cascade, run(tiled, split.split_arrays(cascade, inputs)))
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-14)


def test_split_rank_twice_and_errors():
    cascade = three_pass_attention(8, 4, 4, 3)
    twice = RankSplit("M0", 2, "M01", "M00").apply(RankSplit("M", 4).apply(cascade))
    assert {r.name: (r.size, r.part_of) for r in twice.ranks if r.part_of} == {
        "M1": (2, "M"), "M01": (2, "M"), "M00": (2, "M")}
    with pytest.raises(IRError, match="choose a tile size that divides it"):
        RankSplit("M", 3).apply(cascade)
    with pytest.raises(IRError, match="rank P1 already exists"):
        RankSplit("M", 2, outer="P1").apply(RankSplit("P", 2).apply(cascade))
    with pytest.raises(IRError, match="extends it by 1"):
        RankSplit("M1", 2).apply(one_pass_attention(8, 4, 4, 4, 2))


def test_loop_order_reorders_commuting_reductions():
    cascade = RankSplit("M", 2).apply(three_pass_attention(8, 4, 4, 3))
    ordered = set_loop_order(cascade, "AV[f, p]", ("p", "f", "m0", "m1"))
    av = ordered.statements[-1]
    assert av.loop_order == ("p", "f", "m0", "m1")
    assert [r.index for r in av.reductions] == ["m1", "m0"]
    assert parse_cascade(print_cascade(ordered)) == ordered
    split = RankSplit("M", 2)
    inputs = split.split_arrays(three_pass_attention(8, 4, 4, 3), attention_inputs(np.random.default_rng(3), p=4))
    np.testing.assert_allclose(run(ordered, inputs)["AV"], run(cascade, inputs)["AV"], rtol=1e-12)


def test_loop_order_refuses_non_commuting_reductions():
    text = "rank I = 2\nrank J = 3\ntensor A[I, J]\ntensor Z[]\nZ[] = A[i, j] reduce j: max, i: sum\n"
    cascade = parse_cascade(text)
    assert set_loop_order(cascade, "Z[]", ("i", "j")).statements[0].loop_order == ("i", "j")
    with pytest.raises(IRError, match="do not commute"):
        set_loop_order(cascade, "Z[]", ("j", "i"))
    with pytest.raises(IRError, match="no Einsum Y\\[\\]"):
        set_loop_order(cascade, "Y[]", ("i", "j"))
    with pytest.raises(IRError, match="must list each index"):
        set_loop_order(cascade, "Z[]", ("i",))
