"""Ready-made attention cascades (ranks: M keys, P queries, E query/key width, F value width).

* `three_pass_attention`: numerically stable softmax as PyTorch computes it: max, then
  exponentials and their sum, then normalisation and the value product: 3 passes over M.
* `one_pass_attention`: FlashAttention-2 style. M is partitioned into M1 blocks of M0 keys;
  an iteration over m1 keeps a running max RM, denominator RD and numerator RNV, rescaling
  them by exp(old max - new max); the division happens once at the end: 1 pass over M.

Both take an optional rank filter on (m, p), e.g. `prefix_filter("m", "p")` for causal
attention or `lambda_filter("m", "p", sinks, window)` for sinks plus a sliding window. Masked
points are absent, and the ∩ merges carry that through the exponentials and sums.
"""

from __future__ import annotations

from llmfab.compiler.formats import FLOAT32, Format
from llmfab.compiler.ir import Affine, Cascade, Condition
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade
from llmfab.compiler.printer import format_condition


def three_pass_attention(
    m: int, p: int, e: int, f: int, scale: float = 1.0, mask: Condition | None = None, kv_format: Format = FLOAT32
) -> Cascade:
    where = f" where {format_condition(mask)}" if mask is not None else ""
    kv = kv_format.spelling()
    text = f"""\
rank M = {m}
rank P = {p}
rank E = {e}
rank F = {f}
tensor Q[E, P] : float32
tensor K[E, M] : {kv}
tensor V[F, M] : {kv}
tensor QK[M, P] : float32
tensor GM[P] : float32
tensor SN[M, P] : float32
tensor SD[P] : float32
tensor A[M, P] : float32
tensor AV[F, P] : float32
QK[m, p] = Q[e, p] * K[e, m] * {float(scale)!r} reduce e: sum{where}
GM[p] = QK[m, p] reduce m: max
SN[m, p] = exp(QK[m, p] -{{intersect}} GM[p])
SD[p] = SN[m, p] reduce m: sum
A[m, p] = SN[m, p] / SD[p]
AV[f, p] = A[m, p] * V[f, m] reduce m: sum
"""
    return parse_cascade(text, "three_pass_attention")


def one_pass_attention(
    m: int,
    p: int,
    e: int,
    f: int,
    block: int,
    scale: float = 1.0,
    mask: Condition | None = None,
    kv_format: Format = FLOAT32,
) -> Cascade:
    """FlashAttention-2 cascade; K and V are given blocked as BK[E, M1, M0] and BV[F, M1, M0]."""
    if block < 1 or m % block:
        raise IRError(f"one_pass_attention: block size {block} must divide the key count {m}")
    where = ""
    if mask is not None:
        # The filter is written on m; inside a block m = block * m1 + m0.
        split = Affine((("m0", 1), ("m1", block)))
        where = f" where {format_condition(mask.substitute('m', split))}"
    kv = kv_format.spelling()
    text = f"""\
rank M1 = {m // block} part of M
rank M0 = {block} part of M
rank P = {p}
rank E = {e}
rank F = {f}
tensor Q[E, P] : float32
tensor BK[E, M1, M0] : {kv}
tensor BV[F, M1, M0] : {kv}
tensor BQK[M1, M0, P] : float32
tensor LM[M1, P] : float32
tensor RM[M1 + 1, P] : float32
tensor SLN[M1, M0, P] : float32
tensor SLD[M1, P] : float32
tensor SLNV[M1, F, P] : float32
tensor PRM[M1, P] : float32
tensor RD[M1 + 1, P] : float32
tensor RNV[M1 + 1, F, P] : float32
tensor AV[F, P] : float32
iterate m1 over M1 until m1 == M1 {{
  init RD[0, p] = 0.0
  init RNV[0, f, p] = 0.0
  BQK[m1, m0, p] = Q[e, p] * BK[e, m1, m0] * {float(scale)!r} reduce e: sum{where}
  LM[m1, p] = BQK[m1, m0, p] reduce m0: max
  RM[m1 + 1, p] = max(RM[m1, p], LM[m1, p])
  SLN[m1, m0, p] = exp(BQK[m1, m0, p] -{{intersect}} RM[m1 + 1, p])
  SLD[m1, p] = SLN[m1, m0, p] reduce m0: sum
  SLNV[m1, f, p] = SLN[m1, m0, p] * BV[f, m1, m0] reduce m0: sum
  PRM[m1, p] = exp(RM[m1, p] -{{intersect}} RM[m1 + 1, p])
  RD[m1 + 1, p] = SLD[m1, p] + RD[m1, p] * PRM[m1, p]
  RNV[m1 + 1, f, p] = SLNV[m1, f, p] + RNV[m1, f, p] * PRM[m1, p]
}}
AV[f, p] = RNV[M1, f, p] / RD[M1, p]
"""
    return parse_cascade(text, "one_pass_attention")


def block_keys(array, block: int):
    """Reshape K[E, M] or V[F, M] into the blocked layout [E, M1, M0] of the 1-pass cascade."""
    rows, keys = array.shape
    return array.reshape(rows, keys // block, block)
