"""`rtl(config, out_dir)`: write the kernel's Verilog, kernel.xml, package script and v++ config.

The folder holds

| file | what |
| --- | --- |
| `<kernel>.v` | the top with XRT's port names (ap_clk, ap_rst_n, s_axi_control_*, m_axi_hbmNN_*, interrupt) |
| `<kernel>_core.v` | the Amaranth design below it (the engine, rtl/engine/engine.py, and all its parts) |
| `kernel.xml` | the kernel description for package_xo / v++ / XRT |
| `package_xo.tcl` | the Vivado batch script that packages the above as `<kernel>.xo` |
| `connectivity.cfg` | v++ `sp=` lines binding master i to HBM[i] (the compiler writes one per program) |
| `rtl_manifest.json` | hardware config and fingerprint, register map, masters, file checksums |

The kernel is the engine (`rtl/engine/engine.Engine`): the XRT control slave with the engine's
arguments and status registers, one AXI4 master per HBM port (instructions come through
`m_axi_hbm00`, so connectivity.cfg binds exactly the HBM ports), the buffers, the issue logic,
the LOAD/STORE DMA and the COMPUTE sequencers built so far (`engine.default_sequencers`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from llmfab.atomic import write_text_atomic
from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.placement import KERNEL_NAME, connectivity_cfg
from llmfab.errors import InputError

from .emit import kernel_sources
from .engine.engine import Engine
from .kernel_shell import master_bundle
from .packaging import kernel_xml, package_xo_tcl

MANIFEST_FORMAT = "llmfab.rtl_kernel"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class RtlOutput:
    """What `rtl` wrote: the folder, the kernel name and the files (name -> path)."""

    folder: Path
    kernel: str
    files: dict[str, Path]
    verilog_files: tuple[str, ...]
    sequencers: tuple[str, ...] = ()  # COMPUTE opcodes the kernel has a sequencer for


class RtlGenerationError(InputError):
    """The engine asked for cannot be generated (named limit of the RTL or of Amaranth)."""


def kernel_masters(config: HardwareConfig) -> dict[str, int]:
    """AXI4 master bundle -> data width for a config's HBM ports."""
    return {master_bundle(p): config.engine.axi_data_width_bits for p in range(config.engine.hbm_ports)}


def rtl(config: HardwareConfig, out_dir: str | Path, kernel: str = KERNEL_NAME, engine: Engine | None = None) -> RtlOutput:
    """Generate the kernel for `config` into `out_dir` (created if needed; each file is written
    through a temporary file and a rename, so no file is ever half-written). `engine`: the core to
    emit (default: `Engine.for_config(config)` with every sequencer there is)."""
    folder = Path(out_dir)
    engine = engine or Engine.for_config(config)
    try:
        sources = kernel_sources(engine, kernel)
    except (AssertionError, MemoryError, RecursionError) as err:  # Amaranth's limits, not a bug of the input
        g = engine.geometry
        raise RtlGenerationError(
            f"the engine ({g.hbm_ports} ports x {g.axi_data_width} bits, {g.decode_lanes} decode lanes, "
            f"{g.attention_lanes} attention lanes, {g.word_bytes}-byte buffer words) is too large for Amaranth to "
            f"convert ({type(err).__name__}{': ' + str(err) if str(err) else ', e.g. a value wider than 65,536 bits'}); "
            "u280-default converts in about 80 minutes at 15 GB (docs/rtl.md, Known limits): free memory or choose a "
            "smaller --engine") from None
    masters = kernel_masters(config)
    registers = engine.register_map
    texts = dict(sources.files)
    verilog_files = tuple(texts)
    texts["kernel.xml"] = kernel_xml(kernel, registers, masters)
    texts["package_xo.tcl"] = package_xo_tcl(kernel, verilog_files, registers, masters)
    texts["connectivity.cfg"] = connectivity_cfg(config, list(range(config.engine.hbm_ports)), kernel=kernel)
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "kernel": kernel, "top": sources.top_name,
        "datapath": "engine (rtl/engine/engine.py)",
        "sequencers": sorted(op.name for op in engine.sequencers),
        "hardware": config.to_dict(), "hardware_fingerprint": config.fingerprint(),
        "masters": masters,
        "arguments": [{"name": a.name, "kind": a.kind.value, "offset": a.offset, "size": a.size_bytes,
                       "master": a.master} for a in registers.arguments],
        "status": [{"name": r.name, "offset": r.offset, "description": r.description} for r in registers.status],
        "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()},
    }
    texts["rtl_manifest.json"] = json.dumps(manifest, indent=2) + "\n"
    files = {}
    for name, text in texts.items():
        write_text_atomic(folder / name, text)
        files[name] = folder / name
    return RtlOutput(folder, kernel, files, verilog_files, tuple(sorted(op.name for op in engine.sequencers)))
