"""Between byte streams and lane units: packed chunks of ACT32 elements in, lanes out, and back.

A packed chunk of `4 · L` bytes (rtl/engine/bytestream.py) holds L ACT32 elements, the low
element in lane 0; a lane unit (rtl/units/pipeline.LaneUnit) takes one beat of L elements per
cycle. `act32_lane_pipeline` joins one or two chunk streams (operands read in lock-step), feeds the
unit, and turns its results back into packed chunks with the inputs' byte counts and `last`
flags, carried beside the unit in a FIFO (the unit keeps its beats in order and drops none).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import fifo

ACT32_BITS = 32


def act32_lane_pipeline(m: Module, unit, sources: dict, sink, out_field: str, name: str) -> None:
    """Wire `unit` (a LaneUnit whose input fields are the keys of `sources`) between the packed
    chunk streams `sources` (field -> stream; all carry the same byte counts) and the packed
    stream `sink`, which gets the unit's `out_field` lanes."""
    lanes = unit.lanes
    side = fifo.SyncFIFO(width=len(sink.payload.count) + 1, depth=unit.LATENCY + 2)
    m.submodules[f"{name}_side"] = side
    m.submodules[f"{name}_unit"] = unit
    streams = list(sources.values())
    first = streams[0].payload
    all_valid = Cat(*(s.valid for s in streams)).all()
    take = Signal(name=f"{name}_take")
    m.d.comb += [
        unit.i.valid.eq(all_valid & side.w_rdy),
        take.eq(unit.i.valid & unit.i.ready),
        side.w_en.eq(take), side.w_data.eq(Cat(first.count, first.last)),
    ]
    for stream_ in streams:
        m.d.comb += stream_.ready.eq(take)
    for field, stream_ in sources.items():
        for lane in range(lanes):
            m.d.comb += unit.i.payload[field][lane].eq(stream_.payload.data[ACT32_BITS * lane:ACT32_BITS * (lane + 1)])
    results = unit.o.payload[out_field]
    m.d.comb += [
        sink.valid.eq(unit.o.valid),
        unit.o.ready.eq(sink.ready),
        sink.payload.data.eq(Cat(*(results[lane] for lane in range(lanes)))),
        sink.payload.count.eq(side.r_data[:len(sink.payload.count)]),
        sink.payload.last.eq(side.r_data[-1]),
        side.r_en.eq(unit.o.valid & sink.ready),
    ]
