"""Board data: frozen dataclasses parsed from the YAML/JSON files in this folder.

`load_board("u280")` reads `u280.yaml` (or `.json`) shipped with the package; `load_board_file`
reads any path. Every figure in a file carries a citation in its section's `sources` map; a
citation starting with "estimate" marks a figure that is not straight from a data sheet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ._fields import BoardDataError, Cited, SectionReader

SCHEMA_VERSION = 1
_SUFFIXES = (".yaml", ".json")
_GB = 1e9


@dataclass(frozen=True)
class FabricResources:
    """Counts of programmable-logic resources (totals, a share, a budget or an estimated use)."""

    luts: int
    ffs: int
    dsps: int
    bram36: int
    uram: int

    def as_dict(self) -> dict[str, int]:
        return {"luts": self.luts, "ffs": self.ffs, "dsps": self.dsps, "bram36": self.bram36, "uram": self.uram}

    def minus(self, other: FabricResources) -> FabricResources:
        return FabricResources(*(max(0, a - b) for a, b in zip(self.as_dict().values(), other.as_dict().values())))

    def scaled(self, factor: float) -> FabricResources:
        return FabricResources(*(int(v * factor) for v in self.as_dict().values()))


@dataclass(frozen=True)
class DeviceSpec(Cited):
    part: str
    family: str
    platform: str | None  # Vitis platform name; None where no XRT shell exists
    host_link: str
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HbmSpec(Cited):
    generation: str
    stacks: int
    pseudo_channels: int
    pc_capacity_bytes: int
    pc_bandwidth_gbs: float  # GB/s, 1e9 bytes per second
    total_bandwidth_gbs: float
    attached_slr: int
    axi_port_width_bits: int
    axi_port_clock_mhz: float | None
    sp_tag: str
    sources: tuple[tuple[str, str], ...]

    @property
    def total_capacity_bytes(self) -> int:
        return self.pseudo_channels * self.pc_capacity_bytes

    @property
    def total_bandwidth_bytes_per_s(self) -> float:
        return self.total_bandwidth_gbs * _GB

    @property
    def pc_bandwidth_bytes_per_s(self) -> float:
        return self.pc_bandwidth_gbs * _GB

    def bank_names(self) -> tuple[str, ...]:
        return tuple(f"{self.sp_tag}[{i}]" for i in range(self.pseudo_channels))


@dataclass(frozen=True)
class DdrSpec(Cited):
    kind: str
    banks: int
    bank_capacity_bytes: int
    bank_bandwidth_gbs: float
    total_bandwidth_gbs: float
    bank_slrs: tuple[int, ...]
    sp_tag: str
    sources: tuple[tuple[str, str], ...]

    @property
    def total_capacity_bytes(self) -> int:
        return self.banks * self.bank_capacity_bytes

    def bank_names(self) -> tuple[str, ...]:
        return tuple(f"{self.sp_tag}[{i}]" for i in range(self.banks))


@dataclass(frozen=True)
class PlramSpec(Cited):
    banks: int
    bank_capacity_bytes: int
    bank_slrs: tuple[int, ...]
    sp_tag: str
    sources: tuple[tuple[str, str], ...]

    def bank_names(self) -> tuple[str, ...]:
        return tuple(f"{self.sp_tag}[{i}]" for i in range(self.banks))


@dataclass(frozen=True)
class FabricSpec(Cited):
    dsp_kind: str
    resources: FabricResources
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SlrSpec(Cited):
    count: int
    per_slr: tuple[FabricResources, ...]  # empty where unknown; index = SLR number
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ShellSpec(Cited):
    """Resources the platform's static region takes before any kernel is placed."""

    resources: FabricResources
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ClockSpec(Cited):
    kernel_min_mhz: float
    kernel_max_mhz: float
    kernel_default_mhz: float
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PowerSpec(Cited):
    max_w: float | None
    tdp_w: float | None
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Board:
    name: str
    full_name: str
    device: DeviceSpec
    hbm: HbmSpec
    ddr: DdrSpec | None
    plram: PlramSpec | None
    fabric: FabricSpec
    slrs: SlrSpec
    platform_shell: ShellSpec
    clock: ClockSpec
    power: PowerSpec

    @property
    def kernel_resources(self) -> FabricResources:
        """Device totals minus the platform shell: what kernels can use at most."""
        return self.fabric.resources.minus(self.platform_shell.resources)

    def memory_banks(self) -> tuple[str, ...]:
        """v++ `--connectivity.sp` bank names, e.g. HBM[0] .. HBM[31], DDR[0], PLRAM[2]."""
        names = list(self.hbm.bank_names())
        for spec in (self.ddr, self.plram):
            if spec is not None:
                names.extend(spec.bank_names())
        return tuple(names)

    def estimated_figures(self) -> tuple[str, ...]:
        """`section.field` of every figure whose citation marks it as an estimate."""
        out = []
        for section in _SECTIONS:
            spec = getattr(self, section)
            if spec is not None:
                out.extend(f"{section}.{f}" for f in spec.estimated_fields())
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return _board_to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<board dict>") -> Board:
        return parse_board(data, origin)


_SECTIONS = ("device", "hbm", "ddr", "plram", "fabric", "slrs", "platform_shell", "clock", "power")


# ---------------------------------------------------------------- parsing


def _resources(r: SectionReader, minimum: int) -> FabricResources:
    return FabricResources(
        luts=r.integer("luts", minimum), ffs=r.integer("ffs", minimum), dsps=r.integer("dsps", minimum),
        bram36=r.integer("bram36", minimum), uram=r.integer("uram", 0),
    )


def _check_total(r: SectionReader, field: str, per_part: float, parts: int, total: float) -> None:
    if abs(per_part * parts - total) > 0.02 * total:
        r.fail(f"{r.path}.{field}", f"{parts} x {per_part:g} = {per_part * parts:g} disagrees with total {total:g} by more than 2%")


def _check_slr_list(r: SectionReader, field: str, slrs: tuple[int, ...], length: int, slr_count: int) -> None:
    if len(slrs) != length:
        r.fail(f"{r.path}.{field}", f"expected {length} entries (one per bank), got {len(slrs)}")
    if any(s >= slr_count for s in slrs):
        r.fail(f"{r.path}.{field}", f"SLR numbers must be below the SLR count {slr_count}")


def _parse_hbm(r: SectionReader, slr_count: int) -> HbmSpec:
    spec = HbmSpec(
        generation=r.text("generation"), stacks=r.integer("stacks"), pseudo_channels=r.integer("pseudo_channels"),
        pc_capacity_bytes=r.integer("pc_capacity_bytes"), pc_bandwidth_gbs=r.number("pc_bandwidth_gbs"),
        total_bandwidth_gbs=r.number("total_bandwidth_gbs"), attached_slr=r.integer("attached_slr", 0),
        axi_port_width_bits=r.integer("axi_port_width_bits"),
        axi_port_clock_mhz=r.number("axi_port_clock_mhz", optional=True), sp_tag=r.text("sp_tag"),
        sources=r.sources(),
    )
    r.reject_unknown()
    _check_total(r, "total_bandwidth_gbs", spec.pc_bandwidth_gbs, spec.pseudo_channels, spec.total_bandwidth_gbs)
    if spec.attached_slr >= slr_count:
        r.fail(f"{r.path}.attached_slr", f"SLR {spec.attached_slr} does not exist (board has {slr_count})")
    return spec


def _parse_ddr(r: SectionReader, slr_count: int) -> DdrSpec:
    spec = DdrSpec(
        kind=r.text("kind"), banks=r.integer("banks"), bank_capacity_bytes=r.integer("bank_capacity_bytes"),
        bank_bandwidth_gbs=r.number("bank_bandwidth_gbs"), total_bandwidth_gbs=r.number("total_bandwidth_gbs"),
        bank_slrs=r.int_list("bank_slrs"), sp_tag=r.text("sp_tag"), sources=r.sources(),
    )
    r.reject_unknown()
    _check_total(r, "total_bandwidth_gbs", spec.bank_bandwidth_gbs, spec.banks, spec.total_bandwidth_gbs)
    _check_slr_list(r, "bank_slrs", spec.bank_slrs, spec.banks, slr_count)
    return spec


def _parse_plram(r: SectionReader, slr_count: int) -> PlramSpec:
    spec = PlramSpec(
        banks=r.integer("banks"), bank_capacity_bytes=r.integer("bank_capacity_bytes"),
        bank_slrs=r.int_list("bank_slrs"), sp_tag=r.text("sp_tag"), sources=r.sources(),
    )
    r.reject_unknown()
    _check_slr_list(r, "bank_slrs", spec.bank_slrs, spec.banks, slr_count)
    return spec


def _parse_slrs(r: SectionReader, totals: FabricResources) -> SlrSpec:
    count = r.integer("count")
    raw = r.raw("per_slr")
    if not isinstance(raw, list):
        r.fail(f"{r.path}.per_slr", "expected a list (empty if unknown)")
    per_slr = []
    for i, item in enumerate(raw):
        item_reader = SectionReader(r.origin, f"{r.path}.per_slr[{i}]", item)
        if item_reader.integer("index", 0) != i:
            item_reader.fail(f"{item_reader.path}.index", f"expected {i} (entries in SLR order)")
        per_slr.append(_resources(item_reader, 0))
        item_reader.reject_unknown()
    spec = SlrSpec(count=count, per_slr=tuple(per_slr), sources=r.sources())
    r.reject_unknown()
    if per_slr and len(per_slr) != count:
        r.fail(f"{r.path}.per_slr", f"expected {count} entries or none, got {len(per_slr)}")
    summed = [sum(v) for v in zip(*(s.as_dict().values() for s in per_slr))] if per_slr else []
    for name, s, t in zip(totals.as_dict(), summed, totals.as_dict().values()):
        if s > t:
            r.fail(f"{r.path}.per_slr", f"SLR {name} add up to {s}, more than the device total {t}")
    return spec


def _parse_clock(r: SectionReader) -> ClockSpec:
    spec = ClockSpec(r.number("kernel_min_mhz"), r.number("kernel_max_mhz"), r.number("kernel_default_mhz"), r.sources())
    r.reject_unknown()
    if not spec.kernel_min_mhz <= spec.kernel_default_mhz <= spec.kernel_max_mhz:
        r.fail(f"{r.path}.kernel_default_mhz", "must lie between kernel_min_mhz and kernel_max_mhz")
    return spec


def parse_board(data: Any, origin: str) -> Board:
    """Build a Board from parsed YAML/JSON; raises BoardDataError naming `origin` and the field."""
    top = SectionReader(origin, "", data)
    version = top.integer("schema_version")
    if version != SCHEMA_VERSION:
        top.fail("schema_version", f"this llmfab reads version {SCHEMA_VERSION}, got {version}")
    name, full_name = top.text("name"), top.text("full_name")

    device = top.sub("device")
    device_spec = DeviceSpec(device.text("part"), device.text("family"), device.text("platform", optional=True),
                             device.text("host_link"), device.sources())
    device.reject_unknown()

    fabric = top.sub("fabric")
    fabric_spec = FabricSpec(fabric.text("dsp_kind"), _resources(fabric, 1), fabric.sources())
    fabric.reject_unknown()

    slrs_spec = _parse_slrs(top.sub("slrs"), fabric_spec.resources)
    hbm_spec = _parse_hbm(top.sub("hbm"), slrs_spec.count)
    ddr = top.sub("ddr", optional=True)
    plram = top.sub("plram", optional=True)

    shell = top.sub("platform_shell")
    shell_spec = ShellSpec(_resources(shell, 0), shell.sources())
    shell.reject_unknown()

    power = top.sub("power")
    power_spec = PowerSpec(power.number("max_w", optional=True), power.number("tdp_w", optional=True), power.sources())
    power.reject_unknown()

    board = Board(
        name=name, full_name=full_name, device=device_spec, hbm=hbm_spec,
        ddr=_parse_ddr(ddr, slrs_spec.count) if ddr else None,
        plram=_parse_plram(plram, slrs_spec.count) if plram else None,
        fabric=fabric_spec, slrs=slrs_spec, platform_shell=shell_spec,
        clock=_parse_clock(top.sub("clock")), power=power_spec,
    )
    top.reject_unknown()
    return board


# ---------------------------------------------------------------- serialising


def _board_to_dict(board: Board) -> dict[str, Any]:
    def plain(spec: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        out = {}
        for key, value in vars(spec).items():
            if key in skip or key == "sources":
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        out["sources"] = dict(spec.sources)
        return out

    slrs = {
        "count": board.slrs.count,
        "per_slr": [{"index": i, **r.as_dict()} for i, r in enumerate(board.slrs.per_slr)],
        "sources": dict(board.slrs.sources),
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "name": board.name,
        "full_name": board.full_name,
        "device": plain(board.device),
        "hbm": plain(board.hbm),
        "ddr": plain(board.ddr) if board.ddr else None,
        "plram": plain(board.plram) if board.plram else None,
        "fabric": {"dsp_kind": board.fabric.dsp_kind, **board.fabric.resources.as_dict(),
                   "sources": dict(board.fabric.sources)},
        "slrs": slrs,
        "platform_shell": {**board.platform_shell.resources.as_dict(), "sources": dict(board.platform_shell.sources)},
        "clock": plain(board.clock),
        "power": plain(board.power),
    }


# ---------------------------------------------------------------- loading


def _board_dir() -> Path:
    return Path(str(resources.files("llmfab.boards")))


def available_boards() -> tuple[str, ...]:
    """Names of the boards shipped with llmfab, sorted."""
    return tuple(sorted({p.stem for p in _board_dir().iterdir() if p.suffix in _SUFFIXES}))


def load_board_file(path: str | Path) -> Board:
    """Load a board from a YAML (.yaml/.yml) or JSON (.json) file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BoardDataError(f"{path}: cannot read board file ({exc.strerror}).") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise BoardDataError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return parse_board(data, str(path))


def load_board(name: str) -> Board:
    """Load a shipped board by name ("u280", "u55c", ...), case-insensitive."""
    key = name.strip().lower()
    for suffix in _SUFFIXES:
        path = _board_dir() / f"{key}{suffix}"
        if path.is_file():
            board = load_board_file(path)
            if board.name != key:
                raise BoardDataError(f"{path}: field 'name': '{board.name}' does not match the file name '{key}'.")
            return board
    known = ", ".join(available_boards())
    raise BoardDataError(f"unknown board '{name}'; known boards: {known}. Pass one of these names.")
