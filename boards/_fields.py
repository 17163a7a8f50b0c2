"""Checked reading of one section of a board file, so every error names the file and the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llmfab.errors import InputError


class BoardDataError(InputError):
    """A board data file (or a board given by name) is missing, malformed or inconsistent."""


ESTIMATE_PREFIX = "estimate"


class SectionReader:
    """Reads typed fields of one mapping; errors say `<origin>: field '<section.field>': ...`."""

    def __init__(self, origin: str, path: str, data: Any):
        self.origin = origin
        self.path = path
        if not isinstance(data, Mapping):
            self.fail(path, f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self.read: set[str] = set()

    def fail(self, field_path: str, problem: str) -> None:
        raise BoardDataError(
            f"{self.origin}: field '{field_path}': {problem}. "
            "Fix the board file (see docs/hardware.md for the format)."
        )

    def _where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, optional: bool) -> Any:
        self.read.add(name)
        if name not in self.data:
            if optional:
                return None
            self.fail(self._where(name), "missing")
        value = self.data[name]
        if value is None and not optional:
            self.fail(self._where(name), "must not be null")
        return value

    def raw(self, name: str, optional: bool = False) -> Any:
        """The field's value unchecked (null allowed only if optional)."""
        return self._get(name, optional)

    def text(self, name: str, optional: bool = False) -> str | None:
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(self._where(name), f"expected a non-empty string, got {value!r}")
        return value

    def integer(self, name: str, minimum: int = 1, optional: bool = False) -> int | None:
        value = self._get(name, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(self._where(name), f"expected an integer, got {value!r}")
        if value < minimum:
            kind = "a positive" if minimum == 1 else f"an integer >= {minimum}, not a"
            self.fail(self._where(name), f"expected {kind} value, got {value}")
        return value

    def number(self, name: str, optional: bool = False) -> float | None:
        """A positive finite number (int or float), returned as float."""
        value = self._get(name, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(self._where(name), f"expected a number, got {value!r}")
        if value <= 0:
            self.fail(self._where(name), f"expected a positive value, got {value}")
        return float(value)

    def int_list(self, name: str, minimum: int = 0) -> tuple[int, ...]:
        value = self._get(name, optional=False)
        if not isinstance(value, list):
            self.fail(self._where(name), f"expected a list of integers, got {value!r}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
                self.fail(self._where(name), f"expected integers >= {minimum}, got {item!r}")
        return tuple(value)

    def sub(self, name: str, optional: bool = False) -> SectionReader | None:
        value = self._get(name, optional)
        if value is None:
            return None
        return SectionReader(self.origin, self._where(name), value)

    def sources(self) -> tuple[tuple[str, str], ...]:
        """The `sources` map; every field read so far that is not null must have a citation."""
        raw = self._get("sources", optional=False)
        if not isinstance(raw, Mapping):
            self.fail(self._where("sources"), "expected a mapping from field name to citation")
        cited = {}
        for key, citation in raw.items():
            if key not in self.read:
                self.fail(self._where(f"sources.{key}"), "cites a field this section does not have")
            if not isinstance(citation, str) or not citation.strip():
                self.fail(self._where(f"sources.{key}"), "expected a non-empty citation string")
            cited[key] = citation
        for name in sorted(self.read - {"sources"}):
            if self.data.get(name) is not None and name not in cited and name not in _UNCITED:
                self.fail(self._where(name), "has no entry in this section's 'sources' map")
        return tuple(sorted(cited.items()))

    def reject_unknown(self) -> None:
        for key in self.data:
            if key not in self.read:
                self.fail(self._where(str(key)), "unknown field (typo?)")


# Descriptive fields that carry no figure and need no citation.
_UNCITED = frozenset({"generation", "kind", "family", "dsp_kind", "index"})


class Cited:
    """Mixin for sections that carry a `sources` tuple of (field, citation) pairs."""

    sources: tuple[tuple[str, str], ...]

    def source(self, field_name: str) -> str | None:
        return dict(self.sources).get(field_name)

    def estimated_fields(self) -> tuple[str, ...]:
        return tuple(k for k, c in self.sources if c.lower().startswith(ESTIMATE_PREFIX))
