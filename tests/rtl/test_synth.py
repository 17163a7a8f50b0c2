"""Yosys resource estimate: cell counts become LUT/FF/DSP/BRAM/URAM figures."""

from __future__ import annotations

import pytest

from llmfab.rtl.emit import component_verilog
from llmfab.rtl.synth import SynthesisFailed, SynthResult, missing_yosys, synthesize
from llmfab.tests.rtl.harness_design import SaturatingAccumulator


def test_cells_convert_to_board_resources():
    result = SynthResult("top", {"LUT6": 10, "LUT2": 3, "RAM64M8": 2, "SRLC32E": 1, "FDRE": 7, "FDSE": 1,
                                 "RAMB36E2": 2, "RAMB18E2": 3, "DSP48E2": 4, "URAM288": 1, "CARRY8": 5}, 1.0)
    r = result.resources
    assert (result.luts_logic, result.luts_memory) == (13, 17)
    assert (r.luts, r.ffs, r.bram36, r.dsps, r.uram) == (30, 8, 4, 4, 1)


@pytest.mark.skipif(missing_yosys() is not None, reason=str(missing_yosys()))
def test_synthesizes_a_small_design():
    result = synthesize(component_verilog(SaturatingAccumulator(8), "sat_acc"), "sat_acc")
    r = result.resources
    assert r.ffs == 8, "one flip-flop per bit of the total"
    assert 8 <= r.luts <= 60 and r.dsps == 0 and r.bram36 == 0
    assert "IBUF" not in result.cells, "synthesized out of context"


@pytest.mark.skipif(missing_yosys() is not None, reason=str(missing_yosys()))
def test_yosys_errors_are_reported():
    with pytest.raises(SynthesisFailed, match="yosys failed on 'nope'"):
        synthesize("module other(input a); endmodule\n", "nope")
