"""Resource estimate of generated Verilog with Yosys `synth_xilinx` (UltraScale+ for the U280).

`synthesize(verilog, top)` runs `yosys` (Debian 0.23 here) out of context (no I/O buffers, no
clock buffer), reads `stat -json` and converts the cell counts to the figures Vivado reports
and the board files list: LUTs (logic, plus LUTs used as distributed RAM or shift registers),
flip-flops, DSP48E2, BRAM36 (two RAMB18 count as one) and URAM288.

Yosys is not Vivado: its mapping, and so these counts, differ from a Vivado run by tens of
percent (no retiming, simpler LUT packing); treat the figures as an estimate of scale.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmfab.boards.board import FabricResources

# LUTs taken by each distributed-RAM / shift-register primitive (UltraScale+ SLICEM).
LUTS_PER_MEMORY_CELL = {
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8,
    "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
    "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
}
LOGIC_LUTS = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6")
FLIP_FLOPS = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
BRAM36 = ("RAMB36E2", "RAMB36E1")
BRAM18 = ("RAMB18E2", "RAMB18E1")
DSPS = ("DSP48E2", "DSP48E1")
URAMS = ("URAM288", "URAM288_BASE")


class SynthesisFailed(RuntimeError):
    """Yosys exited with an error or ran out of time."""


@dataclass(frozen=True)
class SynthResult:
    """Cells Yosys mapped the design to, and the resource figures derived from them."""

    top: str
    cells: dict[str, int]
    seconds: float

    def _sum(self, names) -> int:
        return sum(self.cells.get(n, 0) for n in names)

    @property
    def luts_logic(self) -> int:
        return self._sum(LOGIC_LUTS)

    @property
    def luts_memory(self) -> int:
        return sum(self.cells.get(n, 0) * w for n, w in LUTS_PER_MEMORY_CELL.items())

    @property
    def resources(self) -> FabricResources:
        """LUT (logic + memory), FF, DSP, BRAM36 (RAMB18 halves rounded up), URAM."""
        bram36 = self._sum(BRAM36) + (self._sum(BRAM18) + 1) // 2
        return FabricResources(luts=self.luts_logic + self.luts_memory, ffs=self._sum(FLIP_FLOPS),
                               dsps=self._sum(DSPS), bram36=bram36, uram=self._sum(URAMS))

    def to_dict(self) -> dict:
        return {"top": self.top, "seconds": round(self.seconds, 1), "luts_logic": self.luts_logic,
                "luts_memory": self.luts_memory, **self.resources.as_dict(), "cells": dict(sorted(self.cells.items()))}


def missing_yosys() -> str | None:
    """Why synthesis cannot run here (naming the tool), or None."""
    if shutil.which("yosys") is None:
        return "Yosys: 'yosys' not found on PATH (install the 'yosys' package)"
    return None


def synthesize(verilog: str, top: str, *, family: str = "xcup", timeout_s: float | None = None,
               uram: bool = True) -> SynthResult:
    """Run `synth_xilinx -family <family> -flatten` on `verilog` with top module `top`."""
    reason = missing_yosys()
    if reason is not None:
        raise SynthesisFailed(f"cannot synthesize: {reason}")
    with tempfile.TemporaryDirectory(prefix="llmfab-synth-") as folder:
        source, stat, log = Path(folder) / "design.v", Path(folder) / "stat.json", Path(folder) / "yosys.log"
        source.write_text(verilog)
        options = f"-family {family} -top {top} -flatten -noiopad -noclkbuf" + (" -uram" if uram and family == "xcup" else "")
        script = f"read_verilog {source}; synth_xilinx {options}; tee -q -o {stat} stat -json"
        start = time.perf_counter()
        try:
            run = subprocess.run(["yosys", "-q", "-l", str(log), "-p", script], capture_output=True, text=True,
                                 timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise SynthesisFailed(f"yosys synthesis of '{top}' took more than {timeout_s:.0f} s") from None
        seconds = time.perf_counter() - start
        if run.returncode != 0 or not stat.is_file():
            tail = "\n".join((log.read_text(errors="replace") if log.is_file() else run.stderr).splitlines()[-20:])
            raise SynthesisFailed(f"yosys failed on '{top}' (exit {run.returncode}):\n{tail}")
        design = json.loads(stat.read_text())["design"]
    return SynthResult(top=top, cells={k: int(v) for k, v in design["num_cells_by_type"].items()}, seconds=seconds)
