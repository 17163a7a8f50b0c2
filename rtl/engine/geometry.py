"""The engine's RTL shape, derived from a HardwareConfig in one place.

The scheduler, emulator and cycle model read `EngineParams`; the RTL needs a few derived
quantities on top (buffer word width, lanes of each sequencer). `EngineGeometry.from_config`
computes them, so every RTL block is built from the same numbers the cycle model times.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmfab.boards.hardware import HardwareConfig

from .buffers import BufferGeometry

ACT32_BYTES = 4


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class EngineGeometry:
    """Buffers and datapath widths of one engine.

    - `buffers.word_bytes` = the larger of an AXI beat and `4 · sfu_lanes` (a power of two), so
      one buffer read feeds every special-function lane with an ACT32 element;
    - `sfu_lanes`: ACT32 elements per cycle of the elementwise and per-row sequencers;
    - `hbm_ports`, `axi_data_width`, `axi_burst_len`: the kernel's AXI4 masters;
    - `decode_lanes`, `prefill_rows` x `prefill_cols`, `attention_lanes`: the GEMM and attention
      datapaths (EngineParams' fields of the same names).
    """

    buffers: BufferGeometry
    sfu_lanes: int
    hbm_ports: int
    axi_data_width: int
    axi_burst_len: int
    decode_lanes: int = 8
    prefill_rows: int = 2
    prefill_cols: int = 2
    attention_lanes: int = 4

    @classmethod
    def from_config(cls, config: HardwareConfig) -> "EngineGeometry":
        e = config.engine
        word = _power_of_two_at_least(max(e.axi_data_width_bits // 8, ACT32_BYTES * e.sfu_lanes))
        return cls(BufferGeometry.from_engine(e, word), word // ACT32_BYTES, e.hbm_ports,
                   e.axi_data_width_bits, e.axi_burst_len, e.decode_lanes, e.prefill_rows, e.prefill_cols,
                   e.attention_lanes)

    @property
    def word_bytes(self) -> int:
        return self.buffers.word_bytes
