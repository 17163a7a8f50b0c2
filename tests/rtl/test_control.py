"""The XRT control slave: register map layout, and cocotb tests on both simulators."""

from __future__ import annotations

import pytest

from llmfab.rtl.control import ARGS_OFFSET, ArgumentKind, ControlSlave, RegisterMap
from llmfab.rtl.sim_runner import simulate, simulator_params
from llmfab.tests.rtl.cocotb_control import register_map


def test_pointers_are_8_byte_aligned_and_scalars_follow():
    rm = RegisterMap.build([("a", "m00_axi"), ("b", "m01_axi")], ["n", "k", "m"])
    assert [(a.name, a.offset, a.size_bytes) for a in rm.arguments] == [
        ("a", 0x10, 8), ("b", 0x18, 8), ("n", 0x20, 4), ("k", 0x24, 4), ("m", 0x28, 4)]
    assert rm["a"].master == "m00_axi" and rm["n"].kind is ArgumentKind.SCALAR
    assert rm.end == 0x2C
    assert RegisterMap.build([], ["n"]).arguments[0].offset == ARGS_OFFSET


def test_register_map_rejects_bad_names():
    with pytest.raises(ValueError, match="distinct"):
        RegisterMap.build([("a", "m00_axi")], ["a"])
    with pytest.raises(ValueError, match="identifiers"):
        RegisterMap.build([], ["not a name"])
    with pytest.raises(ValueError, match="control window"):
        RegisterMap.build([], [f"s{i}" for i in range(1100)])


@pytest.mark.parametrize("simulator", simulator_params())
def test_control_slave(simulator):
    result = simulate(ControlSlave(register_map()), toplevel="control_slave",
                      test_module="llmfab.tests.rtl.cocotb_control", simulator=simulator)
    assert len(result.tests) == 5
