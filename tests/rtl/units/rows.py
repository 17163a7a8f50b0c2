"""Rows as beats for the per-row units (RowUnit): split, flag the last beat, compare by row."""

from __future__ import annotations

import numpy as np


def row_beats(lanes: int, rows: dict[str, np.ndarray], row_fields: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Per-field `[R, n]` arrays (n a multiple of `lanes`) -> beats of `lanes` elements with `last`
    on each row's final beat; `row_fields` (`[R]` arrays) are repeated in every beat of their row."""
    count, length = next(iter(rows.values())).shape
    if length % lanes:
        raise ValueError("row length must be a multiple of the lane count")
    beats = []
    for r in range(count):
        for b in range(length // lanes):
            beat = {name: np.asarray(v[r, b * lanes:(b + 1) * lanes]).tolist() for name, v in rows.items()}
            beat.update({name: int(v[r]) for name, v in (row_fields or {}).items()})
            beat["last"] = int(b == length // lanes - 1)
            beats.append(beat)
    return beats
