"""A small design the harness tests simulate: a saturating accumulator with a valid strobe."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class SaturatingAccumulator(wiring.Component):
    """total <= min(total + value, limit) on each cycle with `valid`; `clear` zeroes it."""

    def __init__(self, width: int = 8):
        self.width = width
        super().__init__({"value": In(width), "valid": In(1), "clear": In(1), "total": Out(width)})

    def elaborate(self, platform):
        m = Module()
        limit = (1 << self.width) - 1
        total = Signal(self.width + 1)
        m.d.comb += total.eq(self.total + self.value)
        with m.If(self.clear):
            m.d.sync += self.total.eq(0)
        with m.Elif(self.valid):
            m.d.sync += self.total.eq(Mux(total > limit, limit, total))
        return m
