"""The weight-tile ring: where each weight tile sits in the weight buffer while it is loaded and used.

Tiles are placed one after another in a byte ring (the weight buffer's tile area), in the order
their GEMMs run. A tile is contiguous: one that would run past the end of the area starts again
at its beginning. The scheduler asks for the next tile's place as soon as it has emitted a GEMM
(which frees the oldest tile), so the LOAD unit runs as many tiles ahead as the area holds; the
dependency tokens (compiler/tokens.py) make each LOAD wait for the GEMMs that last read its bytes.
"""

from __future__ import annotations

from collections import deque


class WeightRing:
    """First-in first-out placement of variable-size tiles in ``[base, base + size)``."""

    def __init__(self, base: int, size: int):
        self.base, self.size = base, size
        self.live: deque[tuple[int, int]] = deque()  # (start, end) offsets of tiles loaded, GEMM not yet emitted

    def place(self, nbytes: int) -> int | None:
        """Buffer address for a tile of ``nbytes`` in space no live tile holds, or None if there is none yet."""
        if nbytes > self.size:
            raise ValueError(f"a tile of {nbytes:,} bytes cannot fit a ring of {self.size:,} bytes")
        if not self.live:
            start = 0
        else:
            first, head = self.live[0][0], self.live[-1][1]
            wrapped = self.live[-1][0] < first
            if wrapped:
                start = head if head + nbytes <= first else None
            elif head + nbytes <= self.size:
                start = head
            else:
                start = 0 if nbytes <= first else None
        if start is None:
            return None
        self.live.append((start, start + nbytes))
        return self.base + start

    def release(self) -> None:
        """The oldest tile's GEMM is emitted: its bytes may be loaded over (after that GEMM runs)."""
        self.live.popleft()

    @property
    def in_flight(self) -> int:
        return len(self.live)
