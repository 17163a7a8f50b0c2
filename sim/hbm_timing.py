"""Cycles an HBM transfer takes on the engine's AXI masters: bursts, per-channel efficiency, latency.

A transfer of B bytes spread evenly over P ports (one pseudo-channel each) moves B/P bytes per
port in bursts of `axi_burst_len` beats of `axi_data_width_bits`. Per port:

    cycles = (B/P) / (port_bytes_per_cycle * PC_EFFICIENCY)   # data beats at sustained efficiency
           + bursts * BURST_GAP_CYCLES                          # command/turnaround between bursts
           + read latency (first beat)                          # once per transfer

`port_bytes_per_cycle` is `HardwareConfig.hbm_port_bytes_per_cycle` (the AXI width capped by the
pseudo-channel's bandwidth). Ports work in parallel, so the transfer takes the per-port time of
the most loaded port. The constants and their sources are listed in `HBM_TIMING_SOURCES` and in
docs/performance.md.
"""

from __future__ import annotations

import numpy as np

from llmfab.boards.hardware import HardwareConfig

# Sustained fraction of a pseudo-channel's theoretical bandwidth for long sequential bursts.
PC_EFFICIENCY = 425.0 / 460.0
# Idle cycles per AXI burst (address phase / read-to-read turnaround not hidden by outstanding requests).
BURST_GAP_CYCLES = 2.0
# Time from a read request to its first data beat (page hit).
READ_LATENCY_NS = 107.0

HBM_TIMING_SOURCES = {
    "PC_EFFICIENCY": "Wang et al., 'Shuhai: Benchmarking High Bandwidth Memory on FPGAs', FCCM 2020: 425 GB/s "
                     "measured of the U280's 460 GB/s with sequential accesses on all 32 pseudo-channels",
    "BURST_GAP_CYCLES": "estimate: one address cycle plus one turnaround cycle per burst at the kernel clock; "
                        "makes short bursts markedly slower, as Shuhai and Choi et al. (FPGA 2021) observe",
    "READ_LATENCY_NS": "estimate from Shuhai (FCCM 2020): page-hit read latency of roughly 48 HBM-controller "
                       "cycles at 450 MHz",
}


def burst_bytes(config: HardwareConfig) -> int:
    """Bytes in one full AXI burst of the engine's masters."""
    return config.engine.axi_burst_len * config.engine.axi_data_width_bits // 8


def latency_cycles(config: HardwareConfig) -> float:
    return READ_LATENCY_NS * 1e-9 * config.clock_hz


def transfer_cycles(config: HardwareConfig, nbytes, ports, with_latency: bool = True):
    """Cycles to move `nbytes` spread evenly over `ports` AXI masters (scalars or arrays)."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    ports = np.maximum(np.asarray(ports, dtype=np.float64), 1.0)
    ports = np.minimum(ports, config.engine.hbm_ports)
    per_port = nbytes / ports
    bursts = np.ceil(per_port / burst_bytes(config))
    cycles = per_port / (config.hbm_port_bytes_per_cycle * PC_EFFICIENCY) + bursts * BURST_GAP_CYCLES
    if with_latency:
        cycles = cycles + np.where(nbytes > 0, latency_cycles(config), 0.0)
    return cycles if cycles.ndim else float(cycles)


def sustained_bytes_per_cycle(config: HardwareConfig) -> float:
    """Best case over all ports with full bursts: the effective HBM roof the cycle model can reach."""
    per_burst = burst_bytes(config)
    cycles_per_burst = per_burst / (config.hbm_port_bytes_per_cycle * PC_EFFICIENCY) + BURST_GAP_CYCLES
    return config.engine.hbm_ports * per_burst / cycles_per_burst
