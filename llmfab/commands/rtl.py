"""Generate the accelerator kernel's Verilog and what Vivado needs to package it for XRT.

`llmfab rtl --board u280 [--engine u280-default] -o DIR` writes into DIR the Verilog top (XRT
port names) and the Amaranth design below it, `kernel.xml`, the `package_xo.tcl` script for
Vivado, a v++ `connectivity.cfg` (master i -> HBM[i]) and `rtl_manifest.json`. Vivado and v++
are not run. The kernel is the engine (rtl/engine/engine.py): XRT control slave with the
engine's arguments and status registers, one AXI4 master per HBM port of the engine preset,
buffers, instruction issue, LOAD/STORE DMA and the COMPUTE sequencers built so far (docs/rtl.md).
"""

from __future__ import annotations

import argparse

HELP = "write the kernel's Verilog, kernel.xml and package_xo script for an engine preset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", help="target board, e.g. u280 (default: the engine preset's board)")
    parser.add_argument("--engine", default="u280-default",
                        help="engine preset: HBM ports, AXI width, burst length (see docs/hardware.md; "
                        "default u280-default)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder to write the Verilog, kernel.xml, package_xo.tcl and connectivity.cfg into")


def run(args: argparse.Namespace) -> int:
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.rtl.generate import rtl

    config = HardwareConfig.from_preset(args.engine, board=args.board)
    written = rtl(config, args.output)
    e = config.engine
    print(f"# kernel {written.kernel} for board {config.board.name}, engine {args.engine}: "
          f"{e.hbm_ports} AXI4 masters of {e.axi_data_width_bits} bits, bursts of {e.axi_burst_len} beats")
    print(f"# COMPUTE opcodes with a sequencer: {', '.join(written.sequencers)}")
    for name, path in written.files.items():
        print(f"{path}  ({path.stat().st_size:,} bytes)")
    print(f"# package with: cd {written.folder} && vivado -mode batch -source package_xo.tcl -tclargs "
          f"{written.kernel}.xo")
    return 0
