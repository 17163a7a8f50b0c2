"""The scheduler's choices: tiles that fit, balanced placement, tokens that enforce every hazard,
weight tiles that pack and unpack losslessly, and the HBM capacity error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import Buffer, Flag, Instruction, Opcode, Unit
from llmfab.compiler.memory_plan import BufferPlanError, tile_linear
from llmfab.compiler.model_plan import LinearSpec, ModelPlan
from llmfab.compiler.placement import HbmCapacityError
from llmfab.compiler.scheduler import compile_model
from llmfab.compiler.tokens import Step, assign_tokens, hazards
from llmfab.compiler.weight_tiles import TileShape, pack_rows, pack_tile, unpack_rows, unpack_tile
from llmfab.quant.model_shapes import model_shape
from llmfab.quant.packing import pack_bits
from llmfab.quant.recipe import Recipe
from llmfab.sim.linear_ops import prepare_weight
from llmfab.tests.sim.emulator_fixtures import engine


@pytest.fixture(scope="module")
def llama7b_plan():
    return ModelPlan.build(model_shape("llama-2-7b"), Recipe.from_preset("w2a8kv4"), "llama-2-7b")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_row_packing_matches_the_artifact_bitstream(bits):
    values = np.random.default_rng(bits).integers(0, 1 << bits, (3, 37))
    packed = pack_rows(values, bits)
    np.testing.assert_array_equal(packed, pack_bits(torch.from_numpy(values), bits).numpy())
    np.testing.assert_array_equal(unpack_rows(packed, bits, 37), values)


@pytest.mark.parametrize(("bits", "sparse", "half"), [(2, True, True), (4, False, False), (8, False, False)])
def test_weight_tile_round_trip_gives_the_numerics_weight(bits, sparse, half):
    rng = np.random.default_rng(0)
    n, k, g = 5, 64, 32
    kept = k // 2 if sparse else k
    codes = rng.integers(0, 1 << bits, (n, kept))
    zeros = rng.integers(0, (1 << (bits + 1)) - 1 if half else 1 << bits, (n, k // g))
    scales = rng.uniform(0.001, 0.1, (n, k // g)).astype(np.float16).astype(np.float32)
    patterns = rng.integers(0, 6, (n, k // 4)) if sparse else None
    want = prepare_weight(codes, scales, zeros, g, patterns, zero_halves=half)
    shape = TileShape(n, k, g, bits, sparse, half)
    data = pack_tile(shape, codes, zeros, want.scale_mantissa, want.row_shift, patterns)
    assert len(data) == shape.nbytes and shape.nbytes % 64 == 0
    got = unpack_tile(shape, data)
    for field in ("values", "scale_mantissa", "row_shift"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


def test_tiles_fit_half_the_weight_buffer_and_cover_the_matrix():
    spec = LinearSpec(0, "down_proj", 512, 11008, 2, 64, True, True)
    slot = 64 * 1024
    tiling = tile_linear(spec, slot, 10_000)
    assert all(t.shape.nbytes <= slot for t in tiling.tiles)
    covered = np.zeros((spec.out_features, spec.in_features), dtype=np.int64)
    for t in tiling.tiles:
        covered[t.n0:t.n1, t.k0:t.k1] += 1
    assert (covered == 1).all()
    assert not tiling.k_split
    small = tile_linear(spec, 2048, 10_000)  # a row of 11008 inputs does not fit 2 KiB: K is split
    assert small.k_split and all(t.k0 % 64 == 0 and t.shape.nbytes <= 2048 for t in small.tiles)
    with pytest.raises(BufferPlanError, match="more than the largest weight tile"):
        tile_linear(spec, 64, 10_000)


def test_smollm2_shape_only_plan():
    plan = ModelPlan.build(model_shape("smollm2-135m"), Recipe.from_preset("w2a8kv4"), "smollm2-135m")
    compiled = compile_model(plan, HardwareConfig.from_preset("u280-default"), None)
    report = compiled.report
    per_pc = report["hbm_bytes_per_pc"]
    assert len(per_pc) == 32 and max(per_pc) - min(per_pc) == 0  # striped: every port streams alike
    assert report["chunk_tokens"] >= 1
    for name, buf in report["buffers"].items():
        assert buf["used"] <= buf["capacity"], name
    for tiling in compiled.memory.tilings.values():
        assert max(t.shape.nbytes for t in tiling.tiles) <= compiled.memory.slot_bytes
    assert report["modes"]["decode"]["decoder linears"] == "GEMV"
    assert report["modes"]["prefill"]["decoder linears"] == "GEMM"


def test_model_too_big_for_hbm_says_by_how_much(llama7b_plan):
    few_ports = engine(hbm_ports=8)  # 8 ports reach 8 x 256 MiB, less than the ~2.9 GB the model needs
    with pytest.raises(HbmCapacityError, match=r"does not fit in HBM: .* 8 pseudo-channels .* bytes too many"):
        compile_model(llama7b_plan, few_ports, None)


def test_lambda_plan_has_constant_cache_and_no_rope_instructions():
    """accllm on SmolLM2's shape: Λ attention keeps a constant-size cache per layer (no context
    limit), rotates keys inside ATTENTION (no ROPE), and moves each part of a layer's cache by RING
    row ranges (a region per part, the same in every layer)."""
    recipe = Recipe.from_preset("accllm")
    compiled = compile_model(ModelPlan.build(model_shape("smollm2-135m"), recipe), HardwareConfig.from_preset("u280-default"), None)
    assert compiled.memory.max_context is None and compiled.report["lambda"] == {"sinks": 4, "window": 1024}
    assert compiled.memory.rope_rows == 4 + 1024
    counts = compiled.report["instructions"]["decode"]
    assert "ROPE" not in counts and counts["ATTENTION"] == 30
    kv = [r for r in compiled.placement.regions.values() if r.kind == "kv"]
    parts = {"keys": [s.name for s in compiled.memory.keys.moved_sections()],
             "values": [s.name for s in compiled.memory.values.moved_sections()]}
    assert parts == {"keys": ["sink_codes", "sink_stats", "sink_raw", "window_codes", "window_stats", "window_raw"],
                     "values": ["codes.sinks", "codes.window", "stats.sinks", "stats.window"]}
    assert len(kv) == 10 * 30
    for stream, names in parts.items():
        for name in names:  # same rows every layer, striped over all ports
            shapes = {(r.rows, r.row_bytes, r.ports) for r in kv if r.name.split(".", 2)[2] == f"{stream}.{name}"}
            assert len(shapes) == 1 and next(iter(shapes))[2] == 32, (stream, name, shapes)
    decode = compiled.instructions[compiled.entries["decode"]["entry"]:][:compiled.entries["decode"]["count"]]
    kv_moves = [i for i in decode if i.opcode in (Opcode.LOAD, Opcode.STORE) and i.buf == Buffer.KV]
    assert len(kv_moves) == 2 * 10 * 30 and all(i.flags & Flag.RING for i in kv_moves)


def steps_for(accesses):
    out = []
    for opcode, reads, writes in accesses:
        out.append(Step(Instruction(opcode), list(reads), list(writes)))
    return out


def test_tokens_let_a_load_overlap_the_previous_gemm():
    """Double buffering: L0 L1 G0 L2 G1 L3 G2 — G_i waits for L_i only, L_{i+2} for G_i only."""
    slot = [(Buffer.WGT, 0, 100), (Buffer.WGT, 100, 200)]
    seq = [(Opcode.LOAD, [], [slot[0]]), (Opcode.LOAD, [], [slot[1]])]
    for i in range(3):
        seq.append((Opcode.GEMM, [slot[i % 2]], [(Buffer.ACT, 0, 10)]))
        seq.append((Opcode.LOAD, [], [slot[i % 2]]))
    seq.append((Opcode.END, [], []))
    steps = steps_for(seq)
    edges = set(hazards(steps))
    assert (0, 2) in edges and (1, 4) in edges and (2, 3) in edges and (4, 5) in edges
    insts = assign_tokens(steps)
    loads = [i for i in insts if i.unit is Unit.LOAD]
    gemms = [i for i in insts if i.opcode is Opcode.GEMM]
    assert [l.push_next for l in loads] == [1, 1, 1, 0, 0]  # nobody reads the last two
    assert [g.pop_prev for g in gemms] == [1, 1, 1]
    assert [l.pop_next for l in loads] == [0, 0, 1, 1, 1]
    assert [g.push_prev for g in gemms] == [1, 1, 1]
    # LOADs nobody waits for must not push: END would find a token left
    assert sum(i.push_next for i in insts if i.unit is Unit.LOAD) == sum(i.pop_prev for i in insts)


def test_load_after_store_is_relayed_through_compute():
    kv = (Buffer.KV, 0, 64)
    steps = steps_for([(Opcode.LOAD, [], [kv]), (Opcode.KV_QUANT, [kv], [kv]), (Opcode.STORE, [kv], []),
                       (Opcode.ATTENTION, [kv], [(Buffer.ACT, 0, 8)]), (Opcode.LOAD, [], [kv]),
                       (Opcode.END, [], [])])
    insts = assign_tokens(steps)
    assert insts[2].push_prev and insts[3].pop_next  # STORE -> ATTENTION
    assert insts[3].push_prev and insts[4].pop_next  # ATTENTION -> the next LOAD


def test_lambda_cache_too_big_for_the_kv_buffer_names_the_kv_buffer():
    """Llama-2-7B accllm on u280-default: the Λ region of a layer (~6.5 MB) exceeds the 4 MiB KV
    buffer; the error names the KV buffer and the size it needs, not the activation buffer."""
    plan = ModelPlan.build(model_shape("llama-2-7b"), Recipe.from_preset("accllm"), "llama-2-7b")
    with pytest.raises(BufferPlanError, match=r"Λ KV cache .* does not fit the KV buffer \(4,194,304 bytes\)") as err:
        compile_model(plan, HardwareConfig.from_preset("u280-default"), None)
    assert "activation" not in str(err.value)


def test_per_channel_key_staging_block_is_striped_over_the_ports(llama7b_plan):
    """Dense per-channel keys: the unfinished block (512 KiB per layer for Llama-2-7B) is moved by
    one LOAD and one STORE over all ports, exactly its bytes, not as one row in one pseudo-channel."""
    from llmfab.compiler.isa import KvMode

    assert llama7b_plan.key_mode is KvMode.KV4_CHANNEL
    compiled = compile_model(llama7b_plan, HardwareConfig.from_preset("u280-default"), None)
    region = compiled.placement.regions["kv.0.keys.staging"]
    staging = compiled.memory.keys.staging_bytes
    assert region.ports == 32 and region.rows * region.row_bytes == staging
    decode = compiled.instructions[compiled.entries["decode"]["entry"]:][:compiled.entries["decode"]["count"]]
    moves = [i for i in decode if i.opcode in (Opcode.LOAD, Opcode.STORE) and i.pc == region.pc
             and i.hbm_offset == region.offset]
    assert sorted(i.opcode.name for i in moves) == ["LOAD", "STORE"]
    assert all(i.rows == 32 and i.sub == 32 and i.row_bytes * i.rows == staging for i in moves)
