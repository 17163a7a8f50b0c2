"""Engine parameters and the hardware config (board + engine) every later stage reads.

The scheduler, emulator, cycle model and the RTL/HLS generators take one `HardwareConfig`.
A compiled program records `config.to_dict()` and `config.fingerprint()` in its manifest and
refuses to run on a config with a different fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from llmfab.errors import InputError

from .board import Board, FabricResources, load_board
from .resource_model import ResourceEstimate, estimate_engine_resources

CONFIG_FORMAT = "llmfab.hardware_config"
CONFIG_VERSION = 1
AXI_DATA_WIDTHS = (32, 64, 128, 256, 512)
AXI_MAX_BURST_BEATS = 256  # AXI4 INCR burst limit
AXI_BOUNDARY_BYTES = 4096  # an AXI burst must not cross a 4 KiB boundary
DEFAULT_MAX_UTILIZATION = 0.8


class HardwareConfigError(InputError):
    """Engine parameters are invalid, unknown, or do not fit the chosen board."""


class EngineDoesNotFitError(HardwareConfigError):
    """The engine needs more resources, HBM ports or clock than the board offers."""


class Mode(Enum):
    """The engine's compute modes, each with its own datapath."""

    DECODE = "decode"  # GEMV, int8 activations x int2 weights, LUT shift-add lanes
    PREFILL = "prefill"  # GEMM on the DSP array
    ATTENTION = "attention"  # int8 x int4 (query/probabilities x KV4 cache)
    SPECIAL = "special"  # exp, SiLU, rsqrt, requantisation (elements, not MACs)


@dataclass(frozen=True)
class EngineParams:
    """Shape of the compute engine. Sizes in bytes, clock in MHz."""

    clock_mhz: float
    decode_lanes: int  # int8 x int2 MACs per cycle (LUT shift-add GEMV datapath)
    decode_weight_bits: float  # HBM stream bits per kept weight the lanes are sized for
    prefill_rows: int  # DSP GEMM array rows
    prefill_cols: int  # DSP GEMM array columns; one int8 MAC per PE per cycle
    attention_lanes: int  # int8 x int4 MACs per cycle
    sfu_lanes: int  # special-function elements per cycle
    weight_buffer_bytes: int
    activation_buffer_bytes: int
    kv_buffer_bytes: int
    output_buffer_bytes: int
    hbm_ports: int  # AXI masters, each bound to one HBM pseudo-channel
    axi_data_width_bits: int
    axi_burst_len: int  # beats per burst

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HardwareConfigError(f"engine parameter '{f.name}': expected a number, got {value!r}.")
            if f.type == "int" and not isinstance(value, int):
                raise HardwareConfigError(f"engine parameter '{f.name}': expected an integer, got {value!r}.")
            if not value > 0:
                raise HardwareConfigError(f"engine parameter '{f.name}': expected a positive value, got {value}.")
            if f.type == "float":  # one spelling per value, so 225 and 225.0 fingerprint alike
                object.__setattr__(self, f.name, float(value))
        if self.axi_data_width_bits not in AXI_DATA_WIDTHS:
            raise HardwareConfigError(
                f"engine parameter 'axi_data_width_bits': {self.axi_data_width_bits} is not an AXI width; "
                f"use one of {', '.join(map(str, AXI_DATA_WIDTHS))}.")
        burst_bytes = self.axi_burst_len * self.axi_data_width_bits // 8
        if self.axi_burst_len > AXI_MAX_BURST_BEATS or burst_bytes > AXI_BOUNDARY_BYTES:
            raise HardwareConfigError(
                f"engine parameter 'axi_burst_len': {self.axi_burst_len} beats of {self.axi_data_width_bits} bits "
                f"= {burst_bytes} bytes; an AXI4 burst is at most {AXI_MAX_BURST_BEATS} beats and "
                f"{AXI_BOUNDARY_BYTES} bytes.")

    @property
    def prefill_pes(self) -> int:
        return self.prefill_rows * self.prefill_cols

    def replace(self, **changes: Any) -> EngineParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> EngineParams:
        if not isinstance(data, dict):
            raise HardwareConfigError(f"engine parameters: expected a mapping, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise HardwareConfigError(
                f"engine parameters: missing {missing or 'none'}, unknown {unknown or 'none'}; "
                "expected exactly the fields listed in docs/hardware.md.")
        return cls(**{n: data[n] for n in names})


def decode_lanes_for_stream(hbm_ports: int, axi_data_width_bits: int, weight_bits: float) -> int:
    """Decode lanes that consume every weight the HBM ports deliver each cycle."""
    return int(hbm_ports * axi_data_width_bits // weight_bits)


def _engine(clock_mhz: float, ports: int, rows: int, cols: int, attention: int, sfu: int,
            weight_kib: int, activation_kib: int, kv_kib: int, output_kib: int, weight_bits: float = 4.0) -> EngineParams:
    width = 512
    return EngineParams(
        clock_mhz=clock_mhz, decode_lanes=decode_lanes_for_stream(ports, width, weight_bits),
        decode_weight_bits=weight_bits, prefill_rows=rows, prefill_cols=cols, attention_lanes=attention,
        sfu_lanes=sfu, weight_buffer_bytes=weight_kib * 1024, activation_buffer_bytes=activation_kib * 1024,
        kv_buffer_bytes=kv_kib * 1024, output_buffer_bytes=output_kib * 1024, hbm_ports=ports,
        axi_data_width_bits=width, axi_burst_len=64,
    )


# name -> (board name, engine). Rationale for each in docs/hardware.md.
PRESETS: dict[str, tuple[str, EngineParams]] = {
    "u280-default": ("u280", _engine(225, 32, 64, 64, 512, 64, 2048, 512, 4096, 256)),
    "u280-small": ("u280", _engine(225, 8, 16, 16, 64, 16, 256, 64, 512, 64)),
    "u55c-default": ("u55c", _engine(225, 32, 64, 64, 512, 64, 2048, 512, 4096, 256)),
    # Sized with the cycle model for Llama-2-7B accllm decode (docs/performance.md): 8,192 decode
    # lanes (2x the stream) and 8,192 attention lanes so GEMMs and Λ attention stop holding up
    # the weight stream, an 8 MiB weight buffer whose tile ring keeps the stream going through each
    # layer's attention, an 8 MiB KV buffer for one layer's Λ cache region (6.5 MB), 2 MiB of
    # activations for 9-token prefill chunks.
    "u280-accllm": ("u280", _engine(225, 32, 64, 64, 8192, 64, 8192, 2048, 8192, 256, weight_bits=2.0)),
    # The engine the RTL's whole-engine tests simulate (docs/rtl.md): every mode and unit of the
    # full engine at a size a cocotb run of a tiny model finishes in minutes (2 ports x 64 bits,
    # 8-byte buffer words, 2 SFU lanes, 8 decode lanes, a 2 x 2 prefill array).
    "u280-rtl-tiny": ("u280", EngineParams(
        clock_mhz=225, decode_lanes=8, decode_weight_bits=2.0, prefill_rows=2, prefill_cols=2, attention_lanes=4,
        sfu_lanes=2, weight_buffer_bytes=16 * 1024, activation_buffer_bytes=8 * 1024, kv_buffer_bytes=8 * 1024,
        output_buffer_bytes=4 * 1024, hbm_ports=2, axi_data_width_bits=64, axi_burst_len=16)),
}


def available_presets() -> tuple[str, ...]:
    return tuple(sorted(PRESETS))


def engine_preset(name: str) -> EngineParams:
    return _preset(name)[1]


def _preset(name: str) -> tuple[str, EngineParams]:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise HardwareConfigError(
            f"unknown engine preset '{name}'; known presets: {', '.join(available_presets())}.") from None


@dataclass(frozen=True)
class HardwareConfig:
    """A board plus the engine built on it, with the derived figures later stages need."""

    board: Board
    engine: EngineParams

    @classmethod
    def from_preset(cls, preset: str, board: str | Board | None = None) -> HardwareConfig:
        """The preset's engine on its own board, or on `board` (a name or a Board) if given."""
        board_name, engine = _preset(preset)
        chosen = board if isinstance(board, Board) else load_board(board or board_name)
        return cls(board=chosen, engine=engine)

    # ---- throughput

    @property
    def clock_hz(self) -> float:
        return self.engine.clock_mhz * 1e6

    @property
    def hbm_port_bytes_per_cycle(self) -> float:
        """One AXI master's peak: its data width, capped by its pseudo-channel's bandwidth."""
        return min(self.engine.axi_data_width_bits / 8, self.board.hbm.pc_bandwidth_bytes_per_s / self.clock_hz)

    @property
    def peak_hbm_bytes_per_cycle(self) -> float:
        """All ports together, capped by the board's total HBM bandwidth."""
        ports = self.engine.hbm_ports * self.hbm_port_bytes_per_cycle
        return min(ports, self.board.hbm.total_bandwidth_bytes_per_s / self.clock_hz)

    @property
    def peak_hbm_bytes_per_s(self) -> float:
        return self.peak_hbm_bytes_per_cycle * self.clock_hz

    def macs_per_cycle(self, mode: Mode) -> int:
        """Multiply-accumulates per cycle (for SPECIAL: elements per cycle)."""
        e = self.engine
        return {Mode.DECODE: e.decode_lanes, Mode.PREFILL: e.prefill_pes,
                Mode.ATTENTION: e.attention_lanes, Mode.SPECIAL: e.sfu_lanes}[Mode(mode)]

    def ops_per_cycle(self, mode: Mode) -> int:
        """Operations per cycle: 2 per MAC (multiply + add), 1 per special-function element."""
        return self.macs_per_cycle(mode) * (1 if Mode(mode) is Mode.SPECIAL else 2)

    def peak_ops_per_s(self, mode: Mode) -> float:
        return self.ops_per_cycle(mode) * self.clock_hz

    # ---- resources

    def estimate_resources(self) -> ResourceEstimate:
        return estimate_engine_resources(self.engine)

    def resource_budget(self, max_utilization: float = DEFAULT_MAX_UTILIZATION) -> FabricResources:
        """What the engine may use: kernel-available resources times a utilisation ceiling."""
        return self.board.kernel_resources.scaled(max_utilization)

    def check_fits(self, max_utilization: float = DEFAULT_MAX_UTILIZATION) -> ResourceEstimate:
        """Raise EngineDoesNotFitError listing every violated limit; return the estimate if it fits."""
        if not 0 < max_utilization <= 1:
            raise HardwareConfigError(f"max_utilization must be in (0, 1], got {max_utilization}.")
        board, engine = self.board, self.engine
        problems = []
        if engine.hbm_ports > board.hbm.pseudo_channels:
            problems.append(f"{engine.hbm_ports} HBM ports but the board has {board.hbm.pseudo_channels} "
                            "pseudo-channels (one port per pseudo-channel)")
        if engine.clock_mhz > board.clock.kernel_max_mhz:
            problems.append(f"clock {engine.clock_mhz:g} MHz is above the board's typical kernel maximum "
                            f"{board.clock.kernel_max_mhz:g} MHz")
        estimate = self.estimate_resources()
        budget = self.resource_budget(max_utilization)
        for kind, used in estimate.total.as_dict().items():
            limit = getattr(budget, kind)
            if used > limit:
                problems.append(f"{kind}: needs {used:,}, budget {limit:,} "
                                f"({max_utilization:.0%} of {getattr(board.kernel_resources, kind):,} kernel-available)")
        if problems:
            raise EngineDoesNotFitError(
                f"engine does not fit board '{board.name}': " + "; ".join(problems)
                + ". Shrink the engine parameters or choose a larger board.")
        return estimate

    # ---- serialisation

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
                "board": self.board.to_dict(), "engine": self.engine.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<hardware config>") -> HardwareConfig:
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise HardwareConfigError(f"{origin}: not a hardware config (expected format '{CONFIG_FORMAT}').")
        if data.get("version") != CONFIG_VERSION:
            raise HardwareConfigError(
                f"{origin}: hardware config version {data.get('version')!r}; this llmfab reads {CONFIG_VERSION}.")
        board = Board.from_dict(data.get("board"), origin=f"{origin} (board)")
        return cls(board=board, engine=EngineParams.from_dict(data.get("engine")))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of every figure; citations and display names excluded."""
        canonical = json.dumps(_strip_descriptive(self.to_dict()), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


_DESCRIPTIVE_KEYS = frozenset({"sources", "full_name"})


def _strip_descriptive(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_descriptive(v) for k, v in value.items() if k not in _DESCRIPTIVE_KEYS}
    if isinstance(value, list):
        return [_strip_descriptive(v) for v in value]
    return value
