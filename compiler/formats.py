"""Element formats of IR tensors: a kind, a bit width and named parameters.

A format says how a tensor's elements are stored on the accelerator. It does not change what
the reference interpreter computes (that is exact float64); the numerics of each quantized
format are the business of the numerics spec. New kinds or parameters are added here only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmfab.compiler.ir_errors import IRError


class FormatKind(enum.Enum):
    """Family of an element format; the text spelling is the value followed by the bit width."""

    FLOAT = "float"  # IEEE float: float16, float32, float64
    INT = "int"  # integer activations with a scale, e.g. int8(scale=token)
    WEIGHT = "weight"  # group-wise quantized weights, e.g. weight2(group=64, sparse=2:4)
    KV = "kv"  # quantized KV-cache entries, e.g. kv4(scale=token)
    INDEX = "index"  # a 0/1 selector stored as indices: index3(sparse=2:4), index16(select=onehot)


# Parameter name -> allowed values (None: any positive integer; "N:M": a sparsity pattern).
_ALLOWED_PARAMS: dict[FormatKind, dict[str, tuple[str, ...] | str | None]] = {
    FormatKind.FLOAT: {},
    FormatKind.INT: {"scale": ("token", "tensor", "channel")},
    FormatKind.WEIGHT: {"group": None, "sparse": "N:M", "zero": ("none", "asym")},
    FormatKind.KV: {"scale": ("token", "channel"), "group": None},
    FormatKind.INDEX: {"sparse": "N:M", "select": ("onehot",)},
}
_ALLOWED_BITS: dict[FormatKind, tuple[int, ...]] = {
    FormatKind.FLOAT: (16, 32, 64),
    FormatKind.INT: (2, 3, 4, 8, 16, 32),
    FormatKind.WEIGHT: (1, 2, 3, 4, 8),
    FormatKind.KV: (2, 4, 8),
    FormatKind.INDEX: (3, 8, 16, 32),
}


@dataclass(frozen=True)
class Format:
    """Storage format of a tensor's elements; `params` is sorted by name so equality is structural."""

    kind: FormatKind
    bits: int
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.bits not in _ALLOWED_BITS[self.kind]:
            allowed = ", ".join(f"{self.kind.value}{b}" for b in _ALLOWED_BITS[self.kind])
            raise IRError(f"format {self.kind.value}{self.bits} does not exist; use one of {allowed}")
        allowed_params = _ALLOWED_PARAMS[self.kind]
        names = [name for name, _ in self.params]
        if names != sorted(set(names)):
            raise IRError(f"format {self.spelling()}: parameters must be unique and sorted by name")
        for name, value in self.params:
            if name not in allowed_params:
                known = ", ".join(sorted(allowed_params)) or "none"
                raise IRError(
                    f"format {self.kind.value}{self.bits} has no parameter '{name}' (known: {known})"
                )
            _check_param_value(self.kind, name, value, allowed_params[name])

    @staticmethod
    def make(kind: FormatKind, bits: int, **params: object) -> Format:
        """Build a format from keyword parameters (values are converted to their text form)."""
        items = []
        for name, value in sorted(params.items()):
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ":".join(str(v) for v in value)
            items.append((name, str(value)))
        return Format(kind, bits, tuple(items))

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)

    @property
    def group_size(self) -> int | None:
        group = self.param("group")
        return int(group) if group is not None else None

    @property
    def sparsity(self) -> tuple[int, int] | None:
        """The N:M structured-sparsity pattern, e.g. (2, 4), or None for dense storage."""
        sparse = self.param("sparse")
        if sparse is None:
            return None
        kept, group = sparse.split(":")
        return int(kept), int(group)

    def spelling(self) -> str:
        """Text form used by the IR printer, e.g. `weight2(group=64, sparse=2:4)`."""
        base = f"{self.kind.value}{self.bits}"
        if not self.params:
            return base
        return base + "(" + ", ".join(f"{k}={v}" for k, v in self.params) + ")"


def _check_param_value(kind: FormatKind, name: str, value: str, allowed) -> None:
    where = f"format {kind.value}: parameter {name}={value}"
    if allowed is None:
        if not value.isdigit() or int(value) <= 0:
            raise IRError(f"{where} must be a positive integer")
    elif allowed == "N:M":
        parts = value.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
            raise IRError(f"{where} must be a pattern N:M with 0 < N < M, e.g. 2:4")
    elif value not in allowed:
        raise IRError(f"{where} must be one of {', '.join(allowed)}")


FLOAT16 = Format(FormatKind.FLOAT, 16)
FLOAT32 = Format(FormatKind.FLOAT, 32)
FLOAT64 = Format(FormatKind.FLOAT, 64)


def int8_per_token() -> Format:
    return Format.make(FormatKind.INT, 8, scale="token")


def weight_groupwise(bits: int, group: int, sparse: tuple[int, int] | None = None, zero: str | None = None) -> Format:
    return Format.make(FormatKind.WEIGHT, bits, group=group, sparse=sparse, zero=zero)


def kv_cache(bits: int = 4, scale: str = "token") -> Format:
    return Format.make(FormatKind.KV, bits, scale=scale)


def parse_format_name(name: str) -> tuple[FormatKind, int]:
    """Split `float32` into (FLOAT, 32); raise IRError naming the known kinds otherwise."""
    for kind in FormatKind:
        digits = name[len(kind.value):]
        if name.startswith(kind.value) and digits.isdigit():
            return kind, int(digits)
    known = ", ".join(f"{k.value}<bits>" for k in FormatKind)
    raise IRError(f"unknown element format '{name}'; formats are {known}")
