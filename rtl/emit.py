"""Verilog emission of Amaranth components with stable port names.

Amaranth names the Verilog port of a signature member after its path, joined by a double
underscore: member `dst.data` of a component becomes port `dst__data`; the clock and reset of
the `sync` domain are `clk` and `rst` (active high). Those names depend only on the signature,
so tests, wrappers and scripts may rely on them. `port_name(path)` computes one.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.back import verilog
from amaranth.hdl import Elaboratable

CLOCK_PORT = "clk"
RESET_PORT = "rst"


def port_name(path: Sequence[str | int]) -> str:
    """The Verilog port name Amaranth gives the signature member at `path`."""
    return "__".join(str(part) for part in path)


def component_verilog(component: Elaboratable, name: str) -> str:
    """Verilog text of `component` as a module called `name` (no source locations, so the text
    is the same from run to run and can key a build cache)."""
    if not name.isidentifier():
        raise ValueError(f"Verilog module name {name!r} is not an identifier.")
    return verilog.convert(component, name=name, emit_src=False)
