"""FuseMax pass analysis on the attention cascades and simple cases."""

from llmfab.compiler.attention import one_pass_attention, three_pass_attention
from llmfab.compiler.ir import lambda_filter
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.passes import analyze_all, analyze_passes, max_passes
from llmfab.compiler.transforms import split_rank


def test_three_pass_attention_needs_three_passes_over_m():
    analysis = analyze_passes(three_pass_attention(8, 4, 4, 4), "M")
    assert analysis.passes == 3
    assert [(e.label, e.pass_number) for e in analysis.einsums] == [
        ("QK[m, p]", 1), ("GM[p]", 1), ("SN[m, p]", 2), ("SD[p]", 2), ("A[m, p]", 3), ("AV[f, p]", 3)]
    # QK and SN fibers are read in two passes each: they must be buffered whole or re-read.
    assert analysis.tensor("QK") == 2 and analysis.tensor("SN") == 2 and analysis.tensor("K") == 1


def test_one_pass_attention_needs_one_pass_over_m():
    cascade = one_pass_attention(8, 8, 4, 4, 2, mask=lambda_filter("m", "p", 1, 4))
    analysis = analyze_passes(cascade, "M")
    assert analysis.passes == 1
    assert all(count == 1 for _, count in analysis.tensor_passes)
    final = analysis.einsums[-1]
    assert final.label == "AV[f, p]" and not final.traverses and final.pass_number == 1


def test_other_ranks_need_one_pass():
    passes = {rank: a.passes for rank, a in analyze_all(three_pass_attention(8, 4, 4, 4)).items()}
    assert passes == {"M": 3, "P": 1, "E": 1, "F": 1}
    assert max_passes(one_pass_attention(8, 4, 4, 4, 4)) == 1


def test_partitioning_keeps_the_pass_count():
    cascade = split_rank(three_pass_attention(8, 4, 4, 4), "M", 2)
    assert analyze_passes(cascade, "M").passes == 3


def test_chained_reductions_count_one_pass_each():
    text = (
        "rank K = 3\ntensor A[K]\ntensor S[]\ntensor D[K]\ntensor T[]\ntensor U[K]\n"
        "S[] = A[k] reduce k: sum\nD[k] = A[k] - S[]\nT[] = D[k] * D[k] reduce k: sum\nU[k] = D[k] / T[]\n"
    )
    assert analyze_passes(parse_cascade(text), "K").passes == 3
    assert analyze_passes(parse_cascade("rank K = 3\ntensor A[K]\ntensor B[K]\nB[k] = exp(A[k])\n"), "K").passes == 1
