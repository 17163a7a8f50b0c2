"""First-order FPGA resource estimate of the engine from per-unit costs.

Every cost here is an engineering estimate, not a synthesis result: it exists so that a preset
can be checked against a board before any RTL exists, and so that design sweeps rank shapes
sensibly. The RTL and HLS generators should replace these numbers with measured ones (and the
table in docs/hardware.md with them) once their reports exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .board import FabricResources

if TYPE_CHECKING:
    from .hardware import EngineParams


@dataclass(frozen=True)
class UnitCost:
    """Resources of one instance of a unit; fractions allowed (two MACs share one DSP)."""

    luts: float = 0.0
    ffs: float = 0.0
    dsps: float = 0.0
    bram36: float = 0.0
    uram: float = 0.0

    def times(self, count: float) -> UnitCost:
        return UnitCost(self.luts * count, self.ffs * count, self.dsps * count, self.bram36 * count, self.uram * count)


# One decode lane: an int8 x int2 product as shift-and-add (~10 LUTs), the 2:4 activation
# select (4:1 mux of 8 bits, ~8 LUTs) and its share of the reduction adder tree (~14 LUTs).
DECODE_LANE = UnitCost(luts=32, ffs=40)
# One prefill PE = one int8 MAC per cycle; two PEs share one DSP48E2 through the usual INT8
# packing of two products with a common operand (AMD WP486). LUT/FF for operand pipelines.
PREFILL_PE = UnitCost(luts=24, ffs=48, dsps=0.5)
# One attention lane = one int8 x int4 MAC per cycle (Q.K^T and P.V), packed two per DSP.
ATTENTION_LANE = UnitCost(luts=24, ffs=48, dsps=0.5)
# One special-function lane: fixed-point exp / SiLU / rsqrt / requantisation, one element per
# cycle, with a small lookup table (half a BRAM36) and two DSPs for the polynomial step.
SFU_LANE = UnitCost(luts=600, ffs=800, dsps=2, bram36=0.5)
# Fixed logic: instruction fetch/decode, dependency scoreboard, AXI4-Lite control, DMA sequencers.
FIXED_CONTROL = UnitCost(luts=20_000, ffs=30_000, bram36=16)

# Per AXI master, per data bit: address/data pipeline and width conversion; plus a read FIFO
# one beat wide built from BRAM36 in 512 x 72 mode.
AXI_LUTS_PER_BIT = 4
AXI_FFS_PER_BIT = 6
BRAM36_FIFO_WIDTH_BITS = 72

# Usable data bytes per memory block when built from 64-bit (not 72-bit) words.
BRAM36_BYTES = 4096  # 36 Kb block: 32 Kb of data without the parity bits
URAM_BYTES = 32768  # 288 Kb block: 256 Kb of data without the parity bits


def hbm_port_cost(data_width_bits: int) -> UnitCost:
    fifo_blocks = math.ceil(data_width_bits / BRAM36_FIFO_WIDTH_BITS)
    return UnitCost(luts=AXI_LUTS_PER_BIT * data_width_bits, ffs=AXI_FFS_PER_BIT * data_width_bits,
                    bram36=fifo_blocks)


def buffer_cost(size_bytes: int, in_uram: bool) -> UnitCost:
    """Capacity-only estimate; a wide read port can need more blocks than this."""
    if in_uram:
        return UnitCost(uram=math.ceil(size_bytes / URAM_BYTES))
    return UnitCost(bram36=math.ceil(size_bytes / BRAM36_BYTES))


@dataclass(frozen=True)
class ResourceEstimate:
    """Estimated engine resources: the total and the per-component breakdown behind it."""

    total: FabricResources
    breakdown: tuple[tuple[str, FabricResources], ...]

    def component(self, name: str) -> FabricResources:
        return dict(self.breakdown)[name]


def _round_up(cost: UnitCost) -> FabricResources:
    return FabricResources(*(math.ceil(v - 1e-9) for v in (cost.luts, cost.ffs, cost.dsps, cost.bram36, cost.uram)))


def estimate_engine_resources(engine: EngineParams) -> ResourceEstimate:
    parts = {
        "decode_lanes": DECODE_LANE.times(engine.decode_lanes),
        "prefill_array": PREFILL_PE.times(engine.prefill_rows * engine.prefill_cols),
        "attention_lanes": ATTENTION_LANE.times(engine.attention_lanes),
        "sfu_lanes": SFU_LANE.times(engine.sfu_lanes),
        "hbm_ports": hbm_port_cost(engine.axi_data_width_bits).times(engine.hbm_ports),
        "weight_buffer": buffer_cost(engine.weight_buffer_bytes, in_uram=True),
        "kv_buffer": buffer_cost(engine.kv_buffer_bytes, in_uram=True),
        "activation_buffer": buffer_cost(engine.activation_buffer_bytes, in_uram=False),
        "output_buffer": buffer_cost(engine.output_buffer_bytes, in_uram=False),
        "control": FIXED_CONTROL,
    }
    breakdown = tuple((name, _round_up(cost)) for name, cost in parts.items())
    total = FabricResources(*(sum(getattr(r, f) for _, r in breakdown) for f in ("luts", "ffs", "dsps", "bram36", "uram")))
    return ResourceEstimate(total=total, breakdown=breakdown)
