"""A collector of IR text (rank and tensor declarations, statements) that parses into a Cascade.

The lowering writes Einsums in the documented text format, so what it emits is exactly what
`llmfab compile --emit-ir` prints and what the parser checks; declarations are deduplicated and
a rank declared twice with different sizes is an error.
"""

from __future__ import annotations

from llmfab.compiler.formats import Format
from llmfab.compiler.ir import Cascade
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.parser import parse_cascade


class CascadeText:
    """Ordered declarations and statements of one cascade under construction."""

    def __init__(self) -> None:
        self._ranks: dict[str, str] = {}
        self._tensors: dict[str, str] = {}
        self._statements: list[str] = []

    def rank(self, name: str, size: int, part_of: str | None = None) -> str:
        line = f"rank {name} = {size}" + (f" part of {part_of}" if part_of else "")
        if self._ranks.setdefault(name, line) != line:
            raise IRError(f"lowering: rank {name} declared as `{self._ranks[name]}` and as `{line}`")
        return name

    def tensor(self, name: str, ranks, fmt: Format) -> str:
        line = f"tensor {name}[{', '.join(ranks)}] : {fmt.spelling()}"
        if self._tensors.setdefault(name, line) != line:
            raise IRError(f"lowering: tensor {name} declared as `{self._tensors[name]}` and as `{line}`")
        return name

    def add(self, *statements: str) -> None:
        self._statements.extend(statements)

    def text(self) -> str:
        return "\n".join([*self._ranks.values(), *self._tensors.values(), *self._statements]) + "\n"

    def cascade(self, source: str) -> Cascade:
        return parse_cascade(self.text(), source)


def number(value: float) -> str:
    """A float constant as the printer writes it (so the text round-trips exactly)."""
    return repr(float(value))
