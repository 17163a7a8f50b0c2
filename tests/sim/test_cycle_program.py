"""Whole programs from the scheduler (tiny shape-only compiles): bounds, monotonicity, Λ, what-ifs."""

from __future__ import annotations

import dataclasses

import pytest

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.compiler.isa import Buffer, Flag, Opcode
from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.recipe import Recipe
from llmfab.sim.cycle_program import program_from_model
from llmfab.sim.cycle_whatif import stripe_single_port_transfers
from llmfab.sim.performance import Simulator, bounds, decode_sweep, summary


def tiny(layers=2):
    return ModelConfig(architecture="llama", vocab_size=512, hidden_size=128, intermediate_size=256,
                       num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, name=f"tiny{layers}")

@pytest.fixture(scope="module")
def hardware():
    return HardwareConfig.from_preset("u280-small")

@pytest.fixture(scope="module")
def dense(hardware):
    return program_from_model(tiny(), Recipe.from_preset("w2a8kv4"), hardware)

@pytest.fixture(scope="module")
def lam(hardware):
    return program_from_model(tiny(), Recipe.from_preset("accllm", window=64), hardware)

def test_time_never_below_bandwidth_or_compute_bound(dense, lam):
    for program in (dense, lam):
        sim = Simulator(program)
        for context in (0, 17, 120):
            timing = sim.decode(context)
            b = bounds(timing, program)
            assert timing.cycles >= b.hbm_peak_cycles
            assert timing.cycles >= b.hbm_sustained_cycles
            assert timing.cycles >= b.compute_cycles
        chunk = sim.prefill_chunk(program.chunk_tokens, 0)
        assert chunk.cycles >= bounds(chunk, program).compute_cycles
        assert chunk.macs_by_mode.get(Mode.PREFILL, 0) > 0

def test_what_ifs_never_beat_the_bandwidth_bound(dense, lam):
    from llmfab.sim.cycle_whatif import unbounded_weight_prefetch

    for program in (dense, lam):
        free = unbounded_weight_prefetch(stripe_single_port_transfers(program, min_bytes=1024))
        timing = Simulator(free).decode(60)
        assert timing.cycles >= bounds(timing, free).hbm_sustained_cycles


def test_more_context_more_layers_more_tokens_take_longer(dense, hardware):
    sim = Simulator(dense)
    cycles = [sim.decode(c).cycles for c in (0, 32, 64, 128)]
    assert cycles == sorted(cycles) and cycles[0] < cycles[-1]
    deeper = Simulator(program_from_model(tiny(4), Recipe.from_preset("w2a8kv4"), hardware))
    assert deeper.decode(32).cycles > sim.decode(32).cycles
    prefill = [sim.prefill(n)[0] for n in (1, 8, 40)]
    assert prefill == sorted(prefill) and prefill[0] < prefill[-1]

def test_lambda_program_is_flat_once_the_ring_is_full(lam):
    assert lam.max_context is None
    attention = [i for i in lam.instructions if i.opcode is Opcode.ATTENTION]
    assert attention and all(i.flags & Flag.LAMBDA for i in attention)
    # The LOADs bring in the staged tokens of the unfinished 32-token key block, so the bytes repeat
    # with the block phase (P - S) mod 32: 100, 1,028 and 100,004 share it.
    rows = decode_sweep(lam, [100, 1028, 100_004])
    rates = [r["decode_tokens_per_s"] for r in rows]
    assert rates[0] == pytest.approx(rates[1], rel=1e-3) == pytest.approx(rates[2], rel=1e-3)
    assert rows[0]["hbm_bytes_per_token"] == rows[1]["hbm_bytes_per_token"] == rows[2]["hbm_bytes_per_token"]
    phase = [r["hbm_bytes_per_token"] for r in decode_sweep(lam, range(100, 132))]
    assert max(phase) - min(phase) == 2 * 31 * 4 * 2 * 32  # 2 layers x 31 staged ACT32 keys of KV x D values


def test_dense_program_refuses_contexts_past_its_kv_buffer(dense):
    with pytest.raises(InputError, match="exceeds"):
        Simulator(dense).decode(dense.max_context)
    extrapolated = decode_sweep(dense, [dense.max_context * 4], beyond_buffer=True)[0]
    assert not extrapolated["fits_buffer"]

def test_striping_single_port_regions_never_slows_a_program(dense, lam):
    # The scheduler splits the per-channel key staging block and the norm records over the ports:
    # nothing is left on one port in its programs.
    for program in (dense, lam):
        assert stripe_single_port_transfers(program, min_bytes=1).instructions == program.instructions
    # A norm record LOAD as one row in one pseudo-channel (the scheduler before it chunked them).
    at = next(i for i, inst in enumerate(dense.instructions)  # a routine's first WGT LOAD is its first norm
              if inst.opcode is Opcode.LOAD and inst.buf == Buffer.WGT)
    norm = dense.instructions[at]
    one_row = norm.replace(rows=1, row_bytes=norm.rows * norm.row_bytes, hbm_stride=norm.rows * norm.row_bytes,
                           buf_stride=norm.rows * norm.row_bytes, sub=0, flags=0)
    single = dataclasses.replace(dense, instructions=dense.instructions[:at] + (one_row,) + dense.instructions[at + 1:])
    striped = stripe_single_port_transfers(single, min_bytes=1)
    assert striped.instructions[at].flags & Flag.STRIPED and len(striped.instructions) == len(single.instructions)
    assert Simulator(striped).decode(200).cycles <= Simulator(single).decode(200).cycles


def test_summary_figures_are_consistent(dense):
    s = summary(dense, context=50, prompt_tokens=30)
    assert s["decode_tokens_per_s"] == pytest.approx(1 / s["decode_seconds"])
    assert s["decode_tokens_per_s"] <= s["hbm_sustained_tokens_per_s"] <= s["hbm_roofline_tokens_per_s"]
    assert s["hbm_bytes_per_token"] == pytest.approx(sum(s["hbm_bytes_by_kind"].values()))
    assert s["tokens_per_joule"] == pytest.approx(1 / s["power"]["energy_j"])
    assert set(s["cycles_by_layer"]) == {"embedding", "layer 0", "layer 1", "head"}
    assert sum(s["cycles_by_layer"].values()) <= s["decode_cycles"]

def test_retarget_keeps_the_program_only_for_the_same_buffers(dense, hardware):
    faster = HardwareConfig(board=hardware.board, engine=hardware.engine.replace(clock_mhz=300.0))
    moved = dense.retarget(faster)
    assert moved.instructions is dense.instructions
    assert Simulator(moved).decode(10).seconds < Simulator(dense).decode(10).seconds
    bigger = HardwareConfig(board=hardware.board, engine=hardware.engine.replace(kv_buffer_bytes=2 << 20))
    with pytest.raises(InputError, match="compile the model again"):
        dense.retarget(bigger)


def test_unbounded_weight_prefetch_keeps_tokens_balanced_and_never_slows(hardware):
    from llmfab.sim.cycle_whatif import unbounded_weight_prefetch

    # 8 layers: more weights than the 256 KiB weight ring holds, so tile LOADs wait for free space
    lam = program_from_model(tiny(8), Recipe.from_preset("accllm", window=64), hardware)
    free = unbounded_weight_prefetch(lam)
    for unit_flag in ("pop_next", "push_prev"):
        assert sum(getattr(i, unit_flag) for i in free.instructions) < sum(getattr(i, unit_flag) for i in lam.instructions)
    assert Simulator(free).decode(300).cycles <= Simulator(lam).decode(300).cycles
