"""Cycles an HBM transfer takes on the engine's AXI masters: bursts, per-channel efficiency, latency.

A transfer of B bytes spread evenly over P ports (one pseudo-channel each) moves B/P bytes per
port in bursts of `axi_burst_len` beats of `axi_data_width_bits`. Per port:

    cycles = (B/P) / (port_bytes_per_cycle * pc_efficiency)   # data beats at sustained efficiency
           + bursts * burst_gap_cycles                          # command/turnaround between bursts
           + read latency (first beat)                          # once per transfer

`port_bytes_per_cycle` is `HardwareConfig.hbm_port_bytes_per_cycle` (the AXI width capped by the
pseudo-channel's bandwidth). Ports work in parallel, so the transfer takes the per-port time of
the most loaded port. `HbmTiming` holds the three constants (their sources in
`HBM_TIMING_SOURCES` and docs/performance.md); calibrations against other systems pass their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmfab.boards.hardware import HardwareConfig

HBM_TIMING_SOURCES = {
    "pc_efficiency": "Wang et al., 'Shuhai: Benchmarking High Bandwidth Memory on FPGAs', FCCM 2020: 425 GB/s "
                     "measured of the U280's 460 GB/s with sequential accesses on all 32 pseudo-channels",
    "burst_gap_cycles": "estimate: one address cycle plus one turnaround cycle per burst at the kernel clock; "
                        "makes short bursts markedly slower, as Shuhai and Choi et al. (FPGA 2021) observe",
    "read_latency_ns": "estimate from Shuhai (FCCM 2020): page-hit read latency of roughly 48 HBM-controller "
                       "cycles at 450 MHz",
}


@dataclass(frozen=True)
class HbmTiming:
    """How the HBM behaves under the engine's AXI masters (defaults: the U280 measurements above)."""

    pc_efficiency: float = 425.0 / 460.0  # sustained fraction of a pseudo-channel's bandwidth, long bursts
    burst_gap_cycles: float = 2.0  # idle kernel cycles per AXI burst
    read_latency_ns: float = 107.0  # request to first data beat (page hit)

    def __post_init__(self) -> None:
        if not 0 < self.pc_efficiency <= 1 or self.burst_gap_cycles < 0 or self.read_latency_ns < 0:
            raise ValueError(f"HBM timing out of range: {self}")


DEFAULT_HBM_TIMING = HbmTiming()


def burst_bytes(config: HardwareConfig) -> int:
    """Bytes in one full AXI burst of the engine's masters."""
    return config.engine.axi_burst_len * config.engine.axi_data_width_bits // 8


def latency_cycles(config: HardwareConfig, hbm: HbmTiming = DEFAULT_HBM_TIMING) -> float:
    return hbm.read_latency_ns * 1e-9 * config.clock_hz


def port_transfer_cycles(config: HardwareConfig, per_port_bytes: float, bursts: float,
                         hbm: HbmTiming = DEFAULT_HBM_TIMING) -> float:
    """Cycles for one port to move `per_port_bytes` in `bursts` bursts, including the read latency."""
    if per_port_bytes <= 0:
        return 0.0
    return (per_port_bytes / (config.hbm_port_bytes_per_cycle * hbm.pc_efficiency)
            + bursts * hbm.burst_gap_cycles + latency_cycles(config, hbm))


def sustained_bytes_per_cycle(config: HardwareConfig, hbm: HbmTiming = DEFAULT_HBM_TIMING) -> float:
    """Best case over all ports with full bursts: the effective HBM roof the cycle model can reach."""
    per_burst = burst_bytes(config)
    cycles_per_burst = per_burst / (config.hbm_port_bytes_per_cycle * hbm.pc_efficiency) + hbm.burst_gap_cycles
    return config.engine.hbm_ports * per_burst / cycles_per_burst
