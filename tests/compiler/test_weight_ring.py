"""The weight-tile ring: tiles never overlap a live tile, wrap to the start, and wait for space."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.weight_ring import WeightRing


def test_ring_places_in_order_wraps_and_waits_for_released_space():
    ring = WeightRing(base=1000, size=100)
    assert [ring.place(40), ring.place(40)] == [1000, 1040]
    assert ring.place(40) is None  # 20 bytes left at the end, the start is held
    ring.release()  # [0, 40) free once the first tile's GEMM is emitted
    assert ring.place(30) == 1000  # does not fit the tail: wraps
    assert ring.place(20) is None  # wrapped: free is [30, 40) only
    assert ring.place(10) == 1030
    ring.release()
    ring.release()
    assert ring.place(61) is None and ring.place(60) == 1040  # [40, 100) and [0, 30) free, [30, 40) live
    with pytest.raises(ValueError, match="cannot fit"):
        ring.place(101)


def test_live_tiles_never_overlap_under_random_sizes():
    rng = np.random.default_rng(0)
    ring = WeightRing(0, 1000)
    for size in rng.integers(1, 400, 500):
        while ring.place(int(size)) is None:
            ring.release()
        spans = sorted(ring.live)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert all(0 <= s and e <= 1000 for s, e in spans)
