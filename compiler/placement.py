"""Placement of a program's data in the HBM pseudo-channels, their memory images, and the v++
connectivity file that binds the engine's AXI masters to them.

The engine has ``hbm_ports`` AXI masters, port i bound to pseudo-channel i. Regions are
*striped*: row r of a region lives in pseudo-channel ``r mod ports`` at ``offset + (r div ports) *
stride`` (docs/isa.md, flag STRIPED), so every transfer of more than one row streams from several
ports at once, and bytes are balanced across pseudo-channels by construction. Blobs (weight
tiles, norm records) are cut into one chunk per port. Small one-row regions (the token-id input)
go to the least-filled pseudo-channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.weight_tiles import align
from llmfab.errors import InputError

KERNEL_NAME = "llmfab_engine"


class HbmCapacityError(InputError):
    """The program's data does not fit in the HBM the engine's ports reach."""


@dataclass(frozen=True)
class Region:
    """A placed region: ``rows`` rows of ``row_bytes`` (stride ``stride``), striped over ``ports``
    pseudo-channels from ``pc`` (ports == 1: one pseudo-channel)."""

    name: str
    kind: str
    pc: int
    offset: int
    rows: int
    row_bytes: int
    stride: int
    ports: int

    def location(self, row: int) -> tuple[int, int]:
        """(pseudo-channel, byte offset) of row ``row``."""
        if self.ports > 1:
            return self.pc + row % self.ports, self.offset + (row // self.ports) * self.stride
        return self.pc, self.offset + row * self.stride

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "pc": self.pc, "offset": self.offset, "rows": self.rows,
                "row_bytes": self.row_bytes, "stride": self.stride, "ports": self.ports}


@dataclass
class HbmPlacement:
    """Allocates regions and fills the per-pseudo-channel images (when ``with_images``)."""

    hardware: HardwareConfig
    with_images: bool = True
    regions: dict[str, Region] = field(default_factory=dict)
    cursors: list[int] = field(default_factory=list)
    images: list[bytearray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cursors = [0] * self.ports
        self.images = [bytearray() for _ in range(self.ports)]

    @property
    def ports(self) -> int:
        return min(self.hardware.engine.hbm_ports, self.hardware.board.hbm.pseudo_channels)

    @property
    def pc_capacity(self) -> int:
        return self.hardware.board.hbm.pc_capacity_bytes

    def _add(self, region: Region) -> Region:
        if region.name in self.regions:
            raise ValueError(f"region {region.name} placed twice")
        self.regions[region.name] = region
        return region

    def single(self, name: str, kind: str, nbytes: int) -> Region:
        """A one-row region in the least-filled pseudo-channel."""
        pc = int(np.argmin(self.cursors))
        offset = self.cursors[pc]
        self.cursors[pc] = align(offset + nbytes)
        return self._add(Region(name, kind, pc, offset, 1, nbytes, align(nbytes), 1))

    def striped(self, name: str, kind: str, rows: int, row_bytes: int, stride: int | None = None) -> Region:
        """``rows`` rows striped over every port from pseudo-channel 0 (all cursors are first
        aligned to the fullest one, so the rows sit at one offset everywhere)."""
        stride = align(row_bytes) if stride is None else stride
        offset = align(max(self.cursors))
        per_pc = -(-rows // self.ports) * stride
        self.cursors = [offset + per_pc] * self.ports
        return self._add(Region(name, kind, 0, offset, rows, row_bytes, stride, self.ports))

    def chunked(self, name: str, kind: str, nbytes: int) -> Region:
        """A blob (a weight tile, a norm record) cut into one chunk per port, so one LOAD streams it
        from all ports (:func:`chunk_shape`)."""
        chunks, chunk = chunk_shape(nbytes, self.ports)
        return self.striped(name, kind, chunks, chunk, chunk)

    def split(self, name: str, kind: str, nbytes: int) -> Region:
        """A blob of ``nbytes`` (a multiple of 64) cut into equal chunks, one per port on as many ports
        as divide it exactly (so a transfer of all chunks moves exactly ``nbytes``), striped."""
        if nbytes % 64:
            raise ValueError(f"region {name}: {nbytes} bytes is not a multiple of 64")
        chunks = math.gcd(self.ports, nbytes // 64)
        return self.striped(name, kind, chunks, nbytes // chunks, nbytes // chunks)

    def write(self, region: Region, data: bytes | np.ndarray, row: int | None = None) -> None:
        """Write ``data`` into ``region``: all rows at once (bytes cut into rows of ``row_bytes``,
        or a blob cut into chunks), or one row."""
        if not self.with_images:
            return
        raw = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).reshape(-1)
        rows = range(region.rows) if row is None else [row]
        for r in rows:
            start = (r if row is None else 0) * region.row_bytes
            piece = raw[start:start + region.row_bytes]
            if not piece.size:
                continue
            pc, offset = region.location(r)
            image = self.images[pc]
            if len(image) < offset + piece.size:
                image.extend(bytes(offset + piece.size - len(image)))
            image[offset:offset + piece.size] = piece.tobytes()

    def check_capacity(self) -> None:
        """HbmCapacityError saying by how many bytes the data overflows a pseudo-channel."""
        fullest = max(self.cursors)
        if fullest > self.pc_capacity:
            over = sum(max(0, c - self.pc_capacity) for c in self.cursors)
            raise HbmCapacityError(
                f"the model does not fit in HBM: it needs {fullest:,} bytes in the fullest of the {self.ports} "
                f"pseudo-channels the engine's ports reach, each holds {self.pc_capacity:,} bytes; "
                f"{over:,} bytes too many in all ({sum(self.cursors):,} needed, "
                f"{self.ports * self.pc_capacity:,} available). Use a smaller model, fewer weight bits, "
                "a shorter context, or an engine with more HBM ports")

    def bytes_per_pc(self) -> list[int]:
        return list(self.cursors)

    def finish_images(self, sizes: list[int]) -> list[bytes]:
        """Images padded or cut to ``sizes`` (the end of the regions with initial contents; the
        runtime regions after them start as zeros and need no image bytes)."""
        out = []
        for img, size in zip(self.images, sizes):
            if len(img) > size:
                raise ValueError(f"image data written beyond the initialised size {size}")
            out.append(bytes(img) + bytes(size - len(img)))
        return out


def chunk_shape(nbytes: int, ports: int) -> tuple[int, int]:
    """(chunks, bytes per chunk) of a blob of ``nbytes`` cut over ``ports`` ports in 64-byte
    multiples; a LOAD of all chunks fills ``chunks * chunk`` buffer bytes (at least ``nbytes``)."""
    chunks = min(ports, max(1, -(-nbytes // 64)))
    return chunks, align(-(-nbytes // chunks))


def connectivity_cfg(hardware: HardwareConfig, used_pcs: list[int], kernel: str = KERNEL_NAME) -> str:
    """v++ --config text: one ``sp=`` line per AXI master (port i -> HBM[i]) and the engine's SLR
    (the one the HBM is attached to)."""
    hbm = hardware.board.hbm
    lines = ["# generated by llmfab compile: engine AXI masters -> HBM pseudo-channels", "[connectivity]",
             f"nk={kernel}:1:{kernel}_1"]
    for pc in used_pcs:
        lines.append(f"sp={kernel}_1.m_axi_hbm{pc:02d}:{hbm.sp_tag}[{pc}]")
    lines.append(f"slr={kernel}_1:SLR{hbm.attached_slr}")
    return "\n".join(lines) + "\n"
