"""One HBM port's DMA (rtl/engine/dma.py): LOAD/STORE rows at any alignment, the fetch path sharing port 0's
read channel, and the cycle counts of dma.load_row_cycles / store_row_cycles, on both simulators."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llmfab.compiler.isa import Buffer
from llmfab.rtl.engine.buffers import BufferGeometry
from llmfab.rtl.engine.dma import load_row_cycles, store_row_cycles
from llmfab.rtl.sim_runner import missing_tool, simulate, simulator_params
from llmfab.tests.rtl.engine.dma_design import DmaBench
from llmfab.tests.rtl.engine.geometries import TINY

BUILD_ARGS = {"icarus": ("-g2005",), "verilator": ("--output-split", "0", "-CFLAGS", "-O0")}
# buffer words twice the beat (as the U280 presets have 256-byte words behind 64-byte beats)
WIDE = dataclasses.replace(TINY, buffers=BufferGeometry(16, {Buffer.WGT: 256, Buffer.ACT: 256, Buffer.KV: 128,
                                                              Buffer.OUT: 64}))


def run(geometry, simulator: str, tmp_path, stall: float, testcase=None):
    sizes = {int(b): n * geometry.word_bytes for b, n in geometry.buffers.words.items()}
    timing = tmp_path / "timing.json"
    simulate(DmaBench(geometry, geometry.axi_data_width, geometry.axi_burst_len), toplevel="dma_bench",
             test_module="llmfab.tests.rtl.engine.cocotb_dma", simulator=simulator, build_args=BUILD_ARGS[simulator],
             testcase=testcase, extra_env={"DMA_STALL": str(stall), "DMA_SEED": "3", "DMA_BUFFERS": json.dumps(sizes),
                                           "DMA_TIMING": str(timing)})
    return json.loads(timing.read_text()) if timing.exists() else None


def check_timing(timing: dict, geometry) -> None:
    beat, word = geometry.axi_data_width // 8, geometry.word_bytes
    assert len(timing) == 44
    for name, case in timing.items():
        rows = [(1024 * r + case["hbm_skew"], 512 * r + case["buf_skew"]) for r in range(case["rows"])]
        if name.startswith("load"):
            expected = case["latency"] + sum(load_row_cycles(a, b, case["nbytes"], beat, word) for a, b in rows)
        else:
            expected = sum(store_row_cycles(a, b, case["nbytes"], beat, word) for a, b in rows)
        assert case["cycles"] == expected, f"{name}: {case['cycles']} cycles, the formula gives {expected}"


@pytest.mark.parametrize("simulator", simulator_params())
def test_dma_rows_and_timing(simulator, tmp_path):
    check_timing(run(TINY, simulator, tmp_path, stall=0.0), TINY)


@pytest.mark.parametrize("simulator", simulator_params())
def test_dma_rows_under_backpressure(simulator, tmp_path):
    run(TINY, simulator, tmp_path, stall=0.3, testcase=["loads_and_fetches", "stores"])


@pytest.mark.sim
@pytest.mark.skipif(missing_tool("icarus") is not None, reason=str(missing_tool("icarus")))
def test_dma_with_words_wider_than_beats(tmp_path):
    check_timing(run(WIDE, "icarus", tmp_path, stall=0.0), WIDE)
    run(WIDE, "icarus", tmp_path, stall=0.3, testcase=["loads_and_fetches", "stores"])
