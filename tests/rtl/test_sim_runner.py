"""The cocotb harness: builds, caches, runs on both simulators and reports failures."""

from __future__ import annotations

import pytest

from llmfab.rtl.sim_runner import SIMULATORS, SimulationFailed, missing_tool, simulate, simulator_params
from llmfab.tests.rtl.harness_design import SaturatingAccumulator

HARNESS = "llmfab.tests.rtl.cocotb_harness"
FAILING = "llmfab.tests.rtl.cocotb_harness_failing"


@pytest.mark.parametrize("simulator", simulator_params())
def test_passing_module_reports_its_tests_and_reuses_the_build(simulator, tmp_path):
    first = simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module=HARNESS,
                     simulator=simulator, extra_env={"HARNESS_WIDTH": "8"})
    assert [t.name for t in first.tests] == ["accumulates_and_saturates"]
    assert first.tests[0].passed and first.tests[0].sim_time_ns > 0
    second = simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module=HARNESS,
                      simulator=simulator, extra_env={"HARNESS_WIDTH": "8"})
    assert second.cached_build and second.build_dir == first.build_dir
    assert second.test_dir != first.test_dir


@pytest.mark.parametrize("simulator", simulator_params())
def test_a_failing_cocotb_test_raises_with_its_name(simulator):
    with pytest.raises(SimulationFailed, match="1 of 2 cocotb tests failed: total_is_wrong_on_purpose"):
        simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module=FAILING, simulator=simulator)


@pytest.mark.parametrize("simulator", simulator_params())
def test_zero_tests_run_is_a_failure(simulator):
    with pytest.raises(SimulationFailed, match="no cocotb test passed"):
        simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module=HARNESS, simulator=simulator,
                 testcase="no_such_test", extra_env={"HARNESS_WIDTH": "8"})


@pytest.mark.parametrize("simulator", simulator_params())
def test_unimportable_test_module_is_a_failure(simulator):
    with pytest.raises(SimulationFailed):
        simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module="llmfab.tests.rtl.no_such_module",
                 simulator=simulator)


def test_build_cache_key_changes_with_the_design(tmp_path, monkeypatch):
    """A different width gives different Verilog and so a different cached build."""
    from llmfab.rtl.emit import component_verilog
    from llmfab.rtl.sim_runner import _build_key

    a = component_verilog(SaturatingAccumulator(width=8), "sat_acc")
    assert a == component_verilog(SaturatingAccumulator(width=8), "sat_acc"), "emission must be deterministic"
    b = component_verilog(SaturatingAccumulator(width=9), "sat_acc")
    assert _build_key(a, "icarus", "sat_acc", [], {}) != _build_key(b, "icarus", "sat_acc", [], {})
    assert _build_key(a, "icarus", "sat_acc", [], {}) != _build_key(a, "icarus", "sat_acc", ["-DX"], {})


def test_simulator_params_name_the_missing_tool(monkeypatch):
    import llmfab.rtl.sim_runner as sim_runner

    monkeypatch.setattr(sim_runner, "_which", lambda tool: None)
    assert "iverilog" in missing_tool("icarus")
    assert "verilator" in missing_tool("verilator")
    params = simulator_params()
    assert [p.id for p in params] == list(SIMULATORS)
    for p in params:
        skips = [m for m in p.marks if m.name == "skip"]
        assert skips and ("iverilog" in skips[0].kwargs["reason"] or "verilator" in skips[0].kwargs["reason"])
        assert any(m.name == "sim" for m in p.marks)


def test_unknown_simulator_is_rejected():
    with pytest.raises(ValueError, match="unknown simulator 'modelsim'"):
        missing_tool("modelsim")


@pytest.mark.sim
@pytest.mark.skipif(missing_tool("icarus") is not None, reason=str(missing_tool("icarus")))
def test_waves_are_written_into_the_test_folder():
    result = simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module=HARNESS, simulator="icarus",
                      extra_env={"HARNESS_WIDTH": "8"}, waves=True)
    assert (result.test_dir / "sat_acc.fst").stat().st_size > 0


@pytest.mark.sim
@pytest.mark.skipif(missing_tool("icarus") is not None, reason=str(missing_tool("icarus")))
def test_a_given_build_dir_is_used_and_its_other_files_kept(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = simulate(SaturatingAccumulator(width=8), toplevel="sat_acc", test_module=HARNESS, simulator="icarus",
                      extra_env={"HARNESS_WIDTH": "8"}, build_dir=tmp_path, test_dir=tmp_path / "run")
    assert result.build_dir == tmp_path and not result.cached_build
    assert (tmp_path / "sim.vvp").exists() and keep.read_text() == "mine"
    assert (tmp_path / "run" / "results.xml").exists()
