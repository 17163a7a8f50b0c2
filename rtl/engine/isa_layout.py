"""The instruction word as Amaranth layouts, generated from compiler/isa.py's field tables.

The engine decodes a 256-bit word by viewing it through one of two layouts, MEMORY or COMPUTE
(docs/isa.md); both share the header. The layouts are built from `llmfab.compiler.isa.MEMORY` and
`COMPUTE`, so the RTL and the compiler's encoder cannot disagree on a bit position.
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

from llmfab.compiler import isa

WORD_BITS = isa.WORD_BITS


def _layout(fields: tuple[isa.Field, ...]) -> data.FlexibleLayout:
    return data.FlexibleLayout(WORD_BITS, {f.name: data.Field(unsigned(f.width), f.lsb) for f in fields})


HEADER_LAYOUT = _layout(isa.HEADER)
MEMORY_LAYOUT = _layout(isa.MEMORY)
COMPUTE_LAYOUT = _layout(isa.COMPUTE)


def field_width(layout_fields: tuple[isa.Field, ...], name: str) -> int:
    """Width in bits of field `name` (for sizing counters that hold it)."""
    for f in layout_fields:
        if f.name == name:
            return f.width
    raise KeyError(name)
