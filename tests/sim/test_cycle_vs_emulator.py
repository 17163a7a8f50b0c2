"""The cycle model and the emulator agree on what real (weighted) programs execute and move
through HBM: the same instructions per opcode and the same bytes read and written, per run."""

from __future__ import annotations

import pytest

from llmfab.sim.cycle_program import program_from_folder
from llmfab.sim.emulator import Emulator
from llmfab.sim.performance import Simulator
from llmfab.tests.sim.emulator_fixtures import SPARSE_W2, compile_artifact, engine, tiny_artifact

LAMBDA = dict(recipe=dict(preset="accllm", group_size=32, zero_point="half-integer", sinks=3, window=12),
              rtn=SPARSE_W2["rtn"])


@pytest.mark.slow
@pytest.mark.parametrize("formats", [SPARSE_W2, LAMBDA], ids=["dense", "lambda"])
def test_hbm_bytes_per_run_match_the_emulator(tiny_hf_folder, tmp_path, formats):
    artifact = tiny_artifact(tmp_path / "artifact", tiny_hf_folder, formats)
    _, _, program = compile_artifact(artifact, tmp_path / "program", engine("u280-small"))
    timed = program_from_folder(program.folder)
    sim = Simulator(timed)
    emu = Emulator(program)
    chunk = timed.chunk_tokens
    emu.write_tokens(list(range(3, 3 + chunk)))
    runs = [("prefill", chunk, 0, emu.start("prefill", chunk, 0))]
    for step in range(20):  # past the Λ ring (S + W = 15)
        emu.write_tokens([7 + step])
        runs.append(("decode", 1, chunk + step, emu.start("decode", 1, chunk + step)))
    for routine, n_tokens, position, stats in runs:
        timing = sim.prefill_chunk(n_tokens, position) if routine == "prefill" else sim.decode(position)
        assert timing.count_by_opcode == dict(stats.instructions), routine
        reads = stats.bytes.get("LOAD", 0) + stats.bytes.get("LOAD_ROWS", 0)
        assert timing.hbm_read_bytes == reads, (routine, position)
        assert timing.hbm_write_bytes == stats.bytes.get("STORE", 0), (routine, position)
