"""Cycle model on hand-built instruction lists: exact small cases, token overlap, invariants."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.compiler.isa import Buffer, Flag, GemmMode, Instruction, Opcode, Registers, RowSource
from llmfab.sim import hbm_timing, op_timing
from llmfab.sim.cycle_model import CycleModelError, RoutineTimer
from llmfab.sim.kv_ring import LambdaShape, visibility


@pytest.fixture
def round_config(monkeypatch):
    """u280-small at 200 MHz: 64-byte ports (the pseudo-channel allows 71.9 B/cycle); use with IDEAL HBM."""
    base = HardwareConfig.from_preset("u280-small")
    config = HardwareConfig(board=base.board, engine=base.engine.replace(clock_mhz=200.0))
    monkeypatch.setattr(op_timing, "COMPUTE_PIPELINE_CYCLES", 16)
    assert config.hbm_port_bytes_per_cycle == 64 and hbm_timing.burst_bytes(config) == 4096
    return config


REGS = Registers(n_tokens=1, position=0)
TARGET = op_timing.Datapath.TARGET  # the hand-computed cases below are of the target datapath
IDEAL = hbm_timing.HbmTiming(pc_efficiency=1.0, burst_gap_cycles=2.0, read_latency_ns=0.0)


def load(rows, row_bytes, **kw):
    return Instruction(Opcode.LOAD, buf=Buffer.WGT, rows=rows, row_bytes=row_bytes, hbm_stride=row_bytes,
                       buf_stride=row_bytes, **kw)


def gemv(cols, depth, bits=2, mode=GemmMode.GEMV, **kw):
    return Instruction(Opcode.GEMM, mode=mode, rows=1, cols=cols, depth=depth, aux=64, sub=bits, **kw)


def test_load_cycles_by_hand(round_config):
    # 8 KiB over one port: 128 beats + 2 bursts x 2 gap cycles.
    assert op_timing.op_cost(load(8, 1024), REGS, round_config, IDEAL, TARGET).cycles == 132
    # Striped over 4 ports: 2 KiB per port, one burst each.
    striped = load(8, 1024, flags=Flag.STRIPED, sub=4)
    assert op_timing.op_cost(striped, REGS, round_config, IDEAL, TARGET).cycles == 34
    # A gap between rows in HBM: every 1 KiB row is its own burst.
    gappy = load(8, 1024).replace(hbm_stride=2048)
    assert op_timing.op_cost(gappy, REGS, round_config, IDEAL, TARGET).cycles == 128 + 8 * 2
    assert op_timing.op_cost(load(8, 1024), REGS, round_config, IDEAL, TARGET).hbm_read_bytes == 8192


def test_gemm_cycles_by_hand(round_config):
    lanes = round_config.engine.decode_lanes
    assert lanes == 1024
    assert op_timing.op_cost(gemv(64, 128), REGS, round_config, IDEAL, TARGET).cycles == 8 + 16
    assert op_timing.op_cost(gemv(64, 128, mode=GemmMode.GEMV_SPARSE), REGS, round_config, IDEAL, TARGET).cycles == 4 + 16
    assert op_timing.op_cost(gemv(64, 128, bits=4), REGS, round_config, IDEAL, TARGET).cycles == 16 + 16
    prefill = Instruction(Opcode.GEMM, mode=GemmMode.GEMM, rows=20, cols=40, depth=64, aux=64, sub=2)
    cost = op_timing.op_cost(prefill, REGS, round_config, IDEAL, TARGET)
    assert cost.cycles == 2 * 3 * 64 + 16 + 16 + 16 and cost.mode is Mode.PREFILL and cost.macs == 20 * 40 * 64


def test_rows_from_runtime_registers(round_config):
    norm = Instruction(Opcode.RMSNORM, rows_src=RowSource.TOKENS, cols=64)
    one = op_timing.op_cost(norm, Registers(n_tokens=1, position=0), round_config, datapath=TARGET).cycles
    eight = op_timing.op_cost(norm, Registers(n_tokens=8, position=0), round_config, datapath=TARGET).cycles
    sfu = round_config.engine.sfu_lanes
    assert one == 2 * (64 // sfu) + op_timing.ROW_RECIPROCAL_CYCLES + 16
    assert eight == 2 * (8 * 64 // sfu) + 8 * op_timing.ROW_RECIPROCAL_CYCLES + 16


def program_serial(round_config):
    return [load(8, 1024, push_next=1), gemv(64, 128, pop_prev=1), Instruction(Opcode.END)]


def test_serial_program_is_the_sum(round_config):
    timing = RoutineTimer(program_serial(round_config), round_config, hbm=IDEAL, datapath=TARGET).time(0, REGS)
    assert timing.cycles == 132 + 24
    assert timing.hbm_bytes_by_kind == {"weights": 8192}
    assert timing.count_by_opcode == {"LOAD": 1, "GEMM": 1, "END": 1}


def double_buffered(round_config, tiles, overlap=True):
    prog = []
    for i in range(tiles):
        wait = int(overlap and i >= 2 or not overlap and i >= 1)
        prog.append(load(8, 1024, push_next=1, pop_next=wait))
        if not overlap or i >= 1:
            j = i if not overlap else i - 1
            prog.append(gemv(64, 1024, pop_prev=1, push_prev=int(j + (2 if overlap else 1) < tiles)))
    if overlap:
        prog.append(gemv(64, 1024, pop_prev=1))
    prog.append(Instruction(Opcode.END))
    return prog


def test_double_buffering_hides_compute_under_loads(round_config):
    gemm = 64 * 1024 // 1024 + 16  # 80 cycles, less than a 132-cycle load
    serial = RoutineTimer(double_buffered(round_config, 4, overlap=False), round_config, hbm=IDEAL, datapath=TARGET).time(0, REGS)
    overlapped = RoutineTimer(double_buffered(round_config, 4, overlap=True), round_config, hbm=IDEAL, datapath=TARGET).time(0, REGS)
    assert serial.cycles == 4 * (132 + gemm)
    assert overlapped.cycles == 4 * 132 + gemm


def test_visible_keys_matches_the_lambda_ring():
    shape = LambdaShape(sinks=4, window=16)
    for position, tokens in [(0, 1), (0, 30), (10, 5), (18, 6), (40, 1), (40, 12)]:
        queries = np.arange(position, position + tokens)
        expected = int(visibility(shape, queries, np.arange(position + tokens)).sum())
        regs = Registers(n_tokens=tokens, position=position, sinks=4, window=16)
        assert op_timing.visible_keys(regs, lambda_shaped=True) == expected
        assert op_timing.visible_keys(regs, lambda_shaped=False) == tokens * position + tokens * (tokens + 1) // 2


def test_attention_grows_with_context_dense_and_stays_flat_under_lambda(round_config):
    attn = Instruction(Opcode.ATTENTION, rows_src=RowSource.TOKENS, cols=4 * 64, depth=64, sub=2)
    lam = attn.replace(flags=Flag.LAMBDA)
    dense = [op_timing.op_cost(attn, Registers(1, p, 4, 60), round_config).cycles for p in (10, 100, 1000)]
    flat = [op_timing.op_cost(lam, Registers(1, p, 4, 60), round_config).cycles for p in (100, 1000, 10000)]
    assert dense[0] < dense[1] < dense[2]
    assert flat[0] == flat[1] == flat[2]


def test_bounds_hold_on_a_mixed_program():
    config = HardwareConfig.from_preset("u280-small")
    rng = np.random.default_rng(1)
    prog = []
    for _ in range(60):
        if rng.random() < 0.5:
            prog.append(load(int(rng.integers(1, 64)), 1024, flags=Flag.STRIPED, sub=8, push_next=1))
            prog.append(gemv(int(rng.integers(16, 256)), 512, pop_prev=1))
        else:
            prog.append(Instruction(Opcode.ADD, rows=1, cols=int(rng.integers(64, 4096))))
    prog.append(Instruction(Opcode.END))
    timing = RoutineTimer(prog, config).time(0, REGS)
    bandwidth_bound = timing.hbm_bytes / config.peak_hbm_bytes_per_cycle
    compute_bound = sum(timing.macs_by_mode.get(m, 0) / config.macs_per_cycle(m) for m in (Mode.DECODE,))
    assert timing.cycles >= bandwidth_bound
    assert timing.cycles >= compute_bound + timing.macs_by_mode[Mode.SPECIAL] / config.macs_per_cycle(Mode.SPECIAL)


def test_more_work_takes_longer():
    config = HardwareConfig.from_preset("u280-small")
    short = [load(8, 1024, push_next=1), gemv(64, 128, pop_prev=1), Instruction(Opcode.END)]
    longer = short[:-1] + [load(16, 1024, push_next=1), gemv(64, 256, pop_prev=1), Instruction(Opcode.END)]
    assert RoutineTimer(longer, config).time(0, REGS).cycles > RoutineTimer(short, config).time(0, REGS).cycles


def test_buffer_overflow_is_reported():
    config = HardwareConfig.from_preset("u280-small")
    too_big = load(1024, 1024)  # 1 MiB into a 256 KiB weight buffer
    timing = RoutineTimer([too_big, Instruction(Opcode.END)], config).time(0, REGS)
    assert timing.overflows and "WGT" in timing.overflows[0]


def test_routine_without_end_is_an_error():
    config = HardwareConfig.from_preset("u280-small")
    with pytest.raises(CycleModelError, match="no END"):
        RoutineTimer([load(1, 64)], config).time(0, REGS)


def test_every_timing_constant_has_a_source():
    import dataclasses

    assert sorted(hbm_timing.HBM_TIMING_SOURCES) == sorted(f.name for f in dataclasses.fields(hbm_timing.HbmTiming))
    for name in op_timing.TIMING_SOURCES:
        assert hasattr(op_timing, name), name
    with pytest.raises(ValueError):
        hbm_timing.HbmTiming(pc_efficiency=1.5)


def test_sustained_rate_is_below_the_peak_and_reached_by_long_striped_loads():
    config = HardwareConfig.from_preset("u280-default")
    sustained = hbm_timing.sustained_bytes_per_cycle(config)
    assert sustained < config.peak_hbm_bytes_per_cycle
    big = load(32 * 64, 4096, flags=Flag.STRIPED, sub=32)  # 8 MiB, 64 full bursts per port
    cost = op_timing.op_cost(big, REGS, config)
    assert big.rows * big.row_bytes / cost.cycles == pytest.approx(sustained, rel=0.01)
