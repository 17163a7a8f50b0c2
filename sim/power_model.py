"""Power and energy of the engine from its resources and the activity the cycle model measured.

Power = static + dynamic. Static is the card's idle draw plus the FPGA's leakage; dynamic is
energy per event times events: HBM bits moved, active cycles of each compute unit (its LUTs and
DSPs toggling), the clock tree of every register on every cycle, and on-chip buffer traffic.
Every constant carries its source in `PowerConstants.sources`; the ones starting with "estimate"
are engineering estimates to be replaced by Vivado power reports or board measurements.
docs/performance.md explains the model and compares it with published systems.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.errors import InputError

# Which resource-estimate component is busy when the engine works in each mode.
MODE_COMPONENTS = {
    Mode.DECODE: "decode_lanes",
    Mode.PREFILL: "prefill_array",
    Mode.ATTENTION: "attention_lanes",
    Mode.SPECIAL: "sfu_lanes",
}


@dataclass(frozen=True)
class PowerConstants:
    """Energy per event (pJ) and static power (W), each with its source."""

    hbm_dram_pj_per_bit: float = 3.9
    hbm_controller_pj_per_bit: float = 1.0
    lut_pj_per_active_cycle: float = 0.15
    dsp_pj_per_active_cycle: float = 2.5
    ff_clock_pj_per_cycle: float = 0.02
    sram_pj_per_byte: float = 1.6
    device_static_w: float = 5.0
    card_idle_w: float = 10.0
    sources: dict[str, str] = field(default_factory=lambda: dict(_SOURCES), compare=False)

    def with_changes(self, **changes: float) -> PowerConstants:
        """A copy with some constants replaced (their sources become 'user override')."""
        unknown = set(changes) - set(_SOURCES)
        if unknown:
            raise InputError(f"unknown power constant(s) {sorted(unknown)}; known: {', '.join(_SOURCES)}")
        sources = dict(self.sources)
        sources.update({k: "user override" for k in changes})
        return replace(self, sources=sources, **changes)


_SOURCES = {
    "hbm_dram_pj_per_bit": "O'Connor et al., 'Fine-Grained DRAM', MICRO 2017: HBM2 access energy about 3.9 pJ/bit "
                           "(DRAM core, TSVs and I/O)",
    "hbm_controller_pj_per_bit": "estimate: FPGA-side HBM controller, PHY and AXI switch, about a quarter of the "
                                 "DRAM energy",
    "lut_pj_per_active_cycle": "estimate: 16 nm UltraScale+ LUT with its FF and routing at ~25 % toggle; "
                               "~50 W for a full 1.3 M-LUT device at 250 MHz scaled down",
    "dsp_pj_per_active_cycle": "estimate: DSP48E2 int8 multiply-accumulate with operand pipeline, ~0.6 mW at "
                               "225 MHz",
    "ff_clock_pj_per_cycle": "estimate: clock-tree share per clocked register per cycle, charged on every cycle "
                             "the engine runs",
    "sram_pj_per_byte": "estimate: BRAM/URAM write plus read of each byte streamed through an on-chip buffer "
                        "(~0.1 pJ/bit per access)",
    "device_static_w": "estimate: leakage of the XCU280 (-2L, 0.72-0.85 V) at a typical junction temperature",
    "card_idle_w": "estimate: HBM refresh and idle PHY, regulators, PCIe and board management of an Alveo HBM card "
                   "with the shell loaded",
}

DEFAULT_CONSTANTS = PowerConstants()


@dataclass(frozen=True)
class Activity:
    """What the engine did during one run: its length, HBM traffic and busy cycles per mode."""

    cycles: float
    hbm_bytes: float
    busy_cycles: dict[Mode, float]

    def __post_init__(self) -> None:
        if self.cycles < 0 or self.hbm_bytes < 0 or any(v < 0 for v in self.busy_cycles.values()):
            raise ValueError("activity figures must be non-negative")


@dataclass(frozen=True)
class PowerEstimate:
    """Average power over a run, split into static and dynamic parts (W), and its energy (J)."""

    seconds: float
    static_w: float
    dynamic_w: dict[str, float]
    energy_j: float

    @property
    def total_w(self) -> float:
        return self.static_w + sum(self.dynamic_w.values())

    def tokens_per_joule(self, tokens: float) -> float:
        return tokens / self.energy_j if self.energy_j > 0 else 0.0

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "static_w": self.static_w, "dynamic_w": dict(self.dynamic_w),
                "total_w": self.total_w, "energy_j": self.energy_j}


def estimate_power(config: HardwareConfig, activity: Activity,
                   constants: PowerConstants = DEFAULT_CONSTANTS) -> PowerEstimate:
    """Average power and energy of `activity` on `config`."""
    seconds = activity.cycles / config.clock_hz
    resources = config.estimate_resources()
    pj: dict[str, float] = {}
    pj["hbm"] = activity.hbm_bytes * 8 * (constants.hbm_dram_pj_per_bit + constants.hbm_controller_pj_per_bit)
    pj["buffers"] = activity.hbm_bytes * constants.sram_pj_per_byte
    for mode, component in MODE_COMPONENTS.items():
        unit = resources.component(component)
        per_cycle = unit.luts * constants.lut_pj_per_active_cycle + unit.dsps * constants.dsp_pj_per_active_cycle
        pj[mode.value] = activity.busy_cycles.get(mode, 0.0) * per_cycle
    control = resources.component("control")
    pj["control"] = activity.cycles * control.luts * constants.lut_pj_per_active_cycle
    pj["clock"] = activity.cycles * resources.total.ffs * constants.ff_clock_pj_per_cycle
    static_w = constants.device_static_w + constants.card_idle_w
    dynamic_j = {name: value * 1e-12 for name, value in pj.items()}
    dynamic_w = {name: (j / seconds if seconds > 0 else 0.0) for name, j in dynamic_j.items()}
    return PowerEstimate(seconds=seconds, static_w=static_w, dynamic_w=dynamic_w,
                         energy_j=static_w * seconds + sum(dynamic_j.values()))
