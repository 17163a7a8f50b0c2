"""Lowering of the per-token pieces of a decoder: RMSNorm, A8 requantization, group-wise linear.

* RMSNorm: a sum-of-squares reduction over the hidden rank, `rsqrt(mean + eps)`, the gain.
* A8 (per-token int8 activations): a max-abs reduction over the token's features, the scale
  `max|x| / 127`, and codes `clamp(round(x / scale), -127, 127)` written to an `int8(scale=token)`
  tensor; the scale is applied after the integer MAC. The requantization is explicit Einsums, not
  only a format annotation, because formats describe storage and the interpreter computes in
  float64: only explicit round/clamp reproduces the fake-quant numerics, and the max-abs
  reduction is a real traversal of the features that the pass analysis must see.
* Linear: the input rank is split into [group, within-group] ranks; the integer MAC of a group
  `(codes - zero) * act_codes` (2:4-pruned positions made absent by the index's right-nonzero
  merge) is summed within the group, then scaled per group (weight scale × activation scale)
  and summed over groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmfab.compiler.formats import FLOAT16, FLOAT32, Format, FormatKind, int8_per_token, weight_groupwise
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.lowering_text import CascadeText, number
from llmfab.quant.packing import SUPPORTED_BITS
from llmfab.quant.sparse_index import decode_2to4_mask, decompress_2to4

# Smallest normal float32: replaces a zero A8 scale so an all-zero token stays zero (as torch).
TINY_SCALE = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class RankDim:
    """A rank of the lowered cascade; its index is the lower-cased name."""

    name: str
    size: int
    part_of: str | None = None

    @property
    def index(self) -> str:
        return self.name.lower()


def indices(dims) -> str:
    return ", ".join(d.index for d in dims)


@dataclass(frozen=True)
class GroupedInput:
    """A linear layer's input dimension as [group ranks..., within-group ranks...].

    `source` lists the ranks of the activation tensor's features in the weight's flat input order
    (outermost first); `reads` holds, per source rank, its index as an affine expression of the
    new indices (a split rank K of size g·n reads `n*kg + kj`).
    """

    source: tuple[RankDim, ...]
    group: tuple[RankDim, ...]
    within: tuple[RankDim, ...]
    reads: tuple[tuple[str, str], ...]  # source rank name -> affine text

    def read(self, rank: str) -> str:
        return dict(self.reads)[rank]


def group_input(source: tuple[RankDim, ...], group_size: int) -> GroupedInput:
    """Split the flat input (mixed radix over `source`) into groups of `group_size` coordinates.

    Walking from the innermost rank outwards, whole ranks go into the group while they fit; the
    rank that crosses the group boundary is split into `<name>G` (outer) × `<name>J` (inner).
    """
    need, group, within, reads = group_size, [], [], {}
    for dim in reversed(source):
        if need == 1:
            group.insert(0, dim)
            reads[dim.name] = dim.index
        elif dim.size <= need:
            if need % dim.size:
                raise IRError(f"group size {group_size} does not tile rank {dim.name} ({dim.size}) of the input")
            within.insert(0, dim)
            reads[dim.name] = dim.index
            need //= dim.size
        else:
            if dim.size % need:
                raise IRError(f"group size {group_size} does not divide rank {dim.name} ({dim.size})")
            outer = RankDim(dim.name + "G", dim.size // need, dim.name)
            inner = RankDim(dim.name + "J", need, dim.name)
            group.insert(0, outer)
            within.insert(0, inner)
            reads[dim.name] = f"{need}*{outer.index} + {inner.index}"
            need = 1
    if need != 1:
        raise IRError(f"group size {group_size} is larger than the input ({group_size // need} coordinates)")
    return GroupedInput(tuple(source), tuple(group), tuple(within), tuple(reads.items()))


@dataclass(frozen=True)
class WeightFormat:
    """How one quantized matrix is stored (from its QuantLinear / QuantEmbedding)."""

    bits: int
    group_size: int
    sparse: bool
    zero_halves: bool
    act_bits: int | None

    @classmethod
    def of(cls, module) -> "WeightFormat":
        q = module.quantized
        return cls(q.bits, q.group_size, q.is_sparse, q.zero_halves, getattr(module, "act_bits", None))

    @property
    def zero_bits(self) -> int:
        bits = self.bits + 1 if self.zero_halves else self.bits
        return bits if bits in SUPPORTED_BITS else 8

    def codes_format(self) -> Format:
        return weight_groupwise(self.bits, self.group_size, (2, 4) if self.sparse else None, zero="asym")


@dataclass(frozen=True)
class ActivationCodes:
    """The tensor a linear layer reads: A8 codes plus per-token scale, or float values."""

    codes: str
    layout: tuple[RankDim, ...]  # ranks of the tensor, without the token rank P
    scale: str | None  # per-token scale tensor [P], None for float activations


@dataclass(frozen=True)
class LinearLayout:
    """One lowered projection: weight tensors `<weight>C/Z/S/M`, partial sums `<output>G`, output."""

    weight: str
    output: str
    grouped: GroupedInput
    out: tuple[RankDim, ...]
    fmt: WeightFormat

    def emit(self, text: CascadeText, source: ActivationCodes) -> None:
        g, w, o = self.grouped.group, self.grouped.within, self.out
        for dim in (*g, *w, *o):
            text.rank(dim.name, dim.size, dim.part_of)
        codes = text.tensor(f"{self.weight}C", [d.name for d in (*g, *w, *o)], self.fmt.codes_format())
        zeros = text.tensor(f"{self.weight}Z", [d.name for d in (*g, *o)], Format.make(FormatKind.INT, self.fmt.zero_bits))
        scales = text.tensor(f"{self.weight}S", [d.name for d in (*g, *o)], FLOAT16)
        if self.fmt.sparse:
            mask = text.tensor(f"{self.weight}M", [d.name for d in (*g, *w, *o)],
                               Format.make(FormatKind.INDEX, 3, sparse="2:4"))
        exact = source.scale is not None
        partial = text.tensor(f"{self.output}G", [d.name for d in (*g, *o)] + ["P"],
                              Format.make(FormatKind.INT, 32) if exact else FLOAT32)
        text.tensor(self.output, [d.name for d in o] + ["P"], FLOAT32)
        gi, wi, oi = indices(g), indices(w), indices(o)
        go = ", ".join(x for x in (gi, oi) if x)
        all_w = ", ".join(x for x in (gi, wi, oi) if x)
        code = f"{codes}[{all_w}]" + (" * 2.0" if self.fmt.zero_halves else "")
        term = f"({code} - {zeros}[{go}])"
        if self.fmt.sparse:
            term += f" *{{right}} {mask}[{all_w}]"
        act = ", ".join([self.grouped.read(d.name) for d in source.layout] + ["p"])
        reduce_within = ", ".join(f"{d.index}: sum" for d in reversed(w))
        text.add(f"{partial}[{go}, p] = {term} * {source.codes}[{act}] reduce {reduce_within}")
        factors = [f"{partial}[{go}, p]", f"{scales}[{go}]"]
        if exact:
            factors.append(f"{source.scale}[p]")
        if self.fmt.zero_halves:
            factors.append("0.5")
        reduce_groups = ", ".join(f"{d.index}: sum" for d in reversed(g))
        text.add(f"{self.output}[{oi}, p] = {' * '.join(factors)}" + (f" reduce {reduce_groups}" if g else ""))

    def arrays(self, module) -> dict[str, np.ndarray]:
        """The weight tensors' values from a QuantLinear/QuantEmbedding (codes dense, pruned = 0)."""
        q = module.quantized
        out_sizes = [d.size for d in self.out]
        g_sizes = [d.size for d in self.grouped.group]
        w_sizes = [d.size for d in self.grouped.within]
        codes = q.codes.double()
        mask = None
        if q.is_sparse:
            mask = decode_2to4_mask(q.mask_codes)
            codes = decompress_2to4(codes, mask)
        n_out, n_in = len(out_sizes), len(g_sizes) + len(w_sizes)

        def full(matrix: torch.Tensor) -> np.ndarray:  # [out, in] -> [group, within, out]
            grid = matrix.reshape(*out_sizes, *g_sizes, *w_sizes)
            order = [*range(n_out, n_out + n_in), *range(n_out)]
            return grid.permute(order).double().numpy()

        def per_group(matrix: torch.Tensor) -> np.ndarray:  # [out, groups] -> [group, out]
            grid = matrix.reshape(*out_sizes, *g_sizes)
            order = [*range(n_out, n_out + len(g_sizes)), *range(n_out)]
            return grid.permute(order).double().numpy()

        found = {
            f"{self.weight}C": full(codes),
            f"{self.weight}Z": per_group(q.zeros.double()),
            f"{self.weight}S": per_group(q.scales.double()),
        }
        if mask is not None:
            found[f"{self.weight}M"] = full(mask.double())
        return found


def emit_rms_norm(text: CascadeText, prefix: str, source: str, gain: str, out: str, hidden: RankDim,
                  eps: float) -> None:
    """`out = source * rsqrt(mean(source²) + eps) * gain` over the hidden rank (per token)."""
    h = hidden.index
    text.rank(hidden.name, hidden.size)
    text.tensor(gain, [hidden.name], FLOAT32)
    text.tensor(f"{prefix}SS", ["P"], FLOAT32)
    text.tensor(f"{prefix}R", ["P"], FLOAT32)
    text.tensor(out, [hidden.name, "P"], FLOAT32)
    text.add(
        f"{prefix}SS[p] = {source}[{h}, p] * {source}[{h}, p] reduce {h}: sum",
        f"{prefix}R[p] = rsqrt({prefix}SS[p] / {number(hidden.size)} + {number(eps)})",
        f"{out}[{h}, p] = {source}[{h}, p] * {prefix}R[p] * {gain}[{h}]",
    )


def emit_act_quant(text: CascadeText, prefix: str, source: str, layout: tuple[RankDim, ...],
                   bits: int | None) -> ActivationCodes:
    """Per-token A8: max-abs over the features, scale, rounded and clamped codes (or pass-through)."""
    if bits is None:
        return ActivationCodes(source, layout, None)
    qmax = number((1 << (bits - 1)) - 1)
    x = f"{source}[{indices(layout)}, p]"
    text.tensor(f"{prefix}A", ["P"], FLOAT32)
    text.tensor(f"{prefix}S", ["P"], FLOAT32)
    codes = text.tensor(f"{prefix}C", [d.name for d in layout] + ["P"], int8_per_token() if bits == 8
                        else Format.make(FormatKind.INT, bits, scale="token"))
    reduce = ", ".join(f"{d.index}: max" for d in reversed(layout))
    text.add(
        f"{prefix}A[p] = max({x}, -{x}) reduce {reduce}",
        f"{prefix}S[p] = max({prefix}A[p] / {qmax}, {number(TINY_SCALE)})",
        f"{codes}[{indices(layout)}, p] = max(min(round({x} / {prefix}S[p]), {qmax}), -{qmax})",
    )
    return ActivationCodes(codes, layout, f"{prefix}S")
