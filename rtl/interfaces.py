"""AXI4-Lite and AXI4 signatures, defined once for the whole engine.

Both are written from the manager's (master's) side: `Out` members are driven by the manager,
`In` members by the subordinate. A slave port is `In(AXI4LiteSignature(...))`, a master port
`Out(AXI4Signature(...))`. Member names are the AXI signal names in lower case (`awaddr`,
`wvalid`, ...), so an Amaranth port `m_axi_hbm00__awaddr` maps one to one onto the Vitis name
`m_axi_hbm00_awaddr` (`rtl.emit.top_ports`).

The AXI4 signature carries what an XRT RTL kernel's memory master needs (UG1393 "RTL Kernels",
interface requirements): addresses, burst length, size and type, cache and protection bits,
last, responses. Transaction IDs, lock, QoS, region and user signals are left out; the
interconnect then treats every transfer as ID 0, which is what a master with in-order
responses wants anyway.
"""

from __future__ import annotations

from enum import IntEnum

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

AXI_ADDR_WIDTH = 64  # XRT buffers are 64-bit device addresses
AXI_LITE_DATA_WIDTH = 32
AXI_MAX_BURST_BEATS = 256
AXI_BOUNDARY_BYTES = 4096


class Burst(IntEnum):
    """AxBURST encodings."""

    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(IntEnum):
    """xRESP encodings."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


# AxCACHE 0b0011: normal non-cacheable bufferable, the value Vitis HLS masters drive.
CACHE_NORMAL_BUFFERABLE = 0b0011
PROT_UNPRIVILEGED_SECURE_DATA = 0b000


def _check_width(what: str, width: int, allowed: tuple[int, ...]) -> None:
    if width not in allowed:
        raise ValueError(f"{what} {width} is not valid; use one of {', '.join(map(str, allowed))}.")


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite (manager's view): five channels, no bursts, 32-bit data."""

    def __init__(self, addr_width: int, data_width: int = AXI_LITE_DATA_WIDTH):
        if not 1 <= addr_width <= 64:
            raise ValueError(f"AXI4-Lite address width {addr_width} is outside 1..64.")
        _check_width("AXI4-Lite data width", data_width, (32, 64))
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return (isinstance(other, AXI4LiteSignature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __hash__(self):
        return hash((AXI4LiteSignature, self.addr_width, self.data_width))

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


class AXI4Signature(wiring.Signature):
    """AXI4 memory-mapped (manager's view) with bursts; see the module docstring for what is left out."""

    DATA_WIDTHS = (32, 64, 128, 256, 512, 1024)

    def __init__(self, data_width: int, addr_width: int = AXI_ADDR_WIDTH):
        _check_width("AXI4 data width", data_width, self.DATA_WIDTHS)
        if not 12 <= addr_width <= 64:
            raise ValueError(f"AXI4 address width {addr_width} is outside 12..64.")
        self.addr_width = addr_width
        self.data_width = data_width
        members = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}addr": Out(addr_width), f"{ch}len": Out(8), f"{ch}size": Out(3), f"{ch}burst": Out(2),
                f"{ch}cache": Out(4), f"{ch}prot": Out(3), f"{ch}valid": Out(1), f"{ch}ready": In(1),
            })
        members.update({
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1), "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "rdata": In(data_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members)

    @property
    def beat_bytes(self) -> int:
        return self.data_width // 8

    @property
    def size_code(self) -> int:
        """AxSIZE for full-width beats: log2 of the bytes per beat."""
        return (self.beat_bytes).bit_length() - 1

    def __eq__(self, other):
        return (isinstance(other, AXI4Signature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __hash__(self):
        return hash((AXI4Signature, self.addr_width, self.data_width))

    def __repr__(self):
        return f"AXI4Signature(data_width={self.data_width}, addr_width={self.addr_width})"

