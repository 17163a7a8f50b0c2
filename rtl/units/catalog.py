"""Every datapath unit at a chosen size, by name, and their Yosys resource figures.

`unit_catalog(lanes)` builds one instance of each unit (`lanes` lanes, rows of up to
`max_beats` beats) for Verilog emission, synthesis or benchmarks. Run as a module to
synthesize them with Yosys `synth_xilinx -family xcup` (rtl/synth.py) and print JSON:

    .venv/bin/python -m llmfab.rtl.units.catalog --lanes 1 --out results/rtl_units_synth.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from amaranth.hdl import Elaboratable

from llmfab.rtl.units.attention import DotProductUnit, SoftmaxUnit
from llmfab.rtl.units.elementwise import ProductUnit, ResidualAddUnit
from llmfab.rtl.units.exp2 import Exp2Unit
from llmfab.rtl.units.kv_quant import KvDequantizeUnit, KvQuantizeUnit
from llmfab.rtl.units.mac_lanes import MacLanesUnit
from llmfab.rtl.units.reciprocal import ReciprocalUnit
from llmfab.rtl.units.requantize import RequantizeUnit
from llmfab.rtl.units.rmsnorm import RmsNormUnit
from llmfab.rtl.units.rope import RopeUnit
from llmfab.rtl.units.rsqrt import RsqrtUnit
from llmfab.rtl.units.sigmoid import SigmoidUnit, SiluUnit


def unit_catalog(lanes: int = 1, max_beats: int = 64) -> dict[str, Callable[[], Elaboratable]]:
    """Name -> constructor of every unit at `lanes` lanes (MAC lanes: 4 × `lanes`, a multiple of
    4 for 2:4; group size 64)."""
    mac_lanes = 4 * lanes
    group = max(64, mac_lanes)
    return {
        "reciprocal": lambda: ReciprocalUnit(lanes, width=48),
        "rsqrt": lambda: RsqrtUnit(lanes, width=48),
        "exp2": lambda: Exp2Unit(lanes, width=24),
        "sigmoid": lambda: SigmoidUnit(lanes),
        "silu": lambda: SiluUnit(lanes),
        "residual_add": lambda: ResidualAddUnit(lanes),
        "product": lambda: ProductUnit(lanes),
        "rope": lambda: RopeUnit(lanes),
        "kv4_dequantize": lambda: KvDequantizeUnit(lanes, bits=4),
        "requantize": lambda: RequantizeUnit(lanes, max_beats),
        "kv4_quantize": lambda: KvQuantizeUnit(lanes, max_beats, bits=4),
        "rmsnorm": lambda: RmsNormUnit(lanes, max_beats),
        "softmax": lambda: SoftmaxUnit(lanes, max_beats),
        "attention_scores": lambda: DotProductUnit.scores(lanes),
        "attention_values": lambda: DotProductUnit.weighted_values(lanes),
        "mac_w2_2to4": lambda: MacLanesUnit(mac_lanes, 2, group, sparse=True),
        "mac_w4": lambda: MacLanesUnit(mac_lanes, 4, group),
        "mac_w8": lambda: MacLanesUnit(mac_lanes, 8, group),
    }


def synthesize_units(lanes: int, names: list[str] | None = None, timeout_s: float = 1800) -> list[dict]:
    """Yosys figures (LUT, FF, DSP, BRAM36, URAM) of the named units (all by default)."""
    from llmfab.rtl.emit import component_verilog
    from llmfab.rtl.synth import synthesize

    catalog = unit_catalog(lanes)
    rows = []
    for name in names or list(catalog):
        top = f"{name}_unit"
        result = synthesize(component_verilog(catalog[name](), top), top, timeout_s=timeout_s)
        rows.append({"unit": name, "lanes": lanes, **result.to_dict()})
        print(f"{name}: {result.resources.as_dict()} ({result.seconds:.0f} s)", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Synthesize the datapath units with Yosys and print JSON.")
    parser.add_argument("--lanes", type=int, default=1, help="lanes per unit (MAC lanes: 4x this)")
    parser.add_argument("--units", nargs="*", help="unit names (default: all)")
    parser.add_argument("--out", type=Path, help="write the JSON here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    text = json.dumps(synthesize_units(args.lanes, args.units), indent=1)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(text)
        os.replace(partial, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
