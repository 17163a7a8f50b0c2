"""The program folder: contents, round trip through load_program, and its errors."""

from __future__ import annotations

import json
import shutil

import pytest

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import decode_program
from llmfab.compiler.program import ProgramError, load_program
from llmfab.tests.sim.emulator_fixtures import compile_artifact, engine, tiny_artifact


@pytest.fixture(scope="module")
def program(tiny_hf_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("program")
    artifact = tiny_artifact(folder / "art", tiny_hf_folder)
    return compile_artifact(artifact, folder / "prog", engine())[2]


def test_folder_contents(program):
    folder = program.folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "llmfab-program" and manifest["model_name"] == "tiny"
    assert manifest["hardware_fingerprint"] == HardwareConfig.from_preset("u280-default").fingerprint()
    assert set(manifest["routines"]) == {"prefill", "decode"}
    instructions = decode_program((folder / "instructions.bin").read_bytes())
    for routine in manifest["routines"].values():
        last = instructions[routine["entry"] + routine["count"] - 1]
        assert last.opcode.name == "END"
    images = sorted(p.name for p in (folder / "hbm").iterdir())
    assert images == [f"pc{i:02d}.bin" for i in range(32)]
    for entry in manifest["hbm"]["pcs"]:
        assert (folder / entry["file"]).stat().st_size == entry["image_bytes"] <= entry["used_bytes"]
    cfg = (folder / "connectivity.cfg").read_text()
    assert "sp=llmfab_engine_1.m_axi_hbm31:HBM[31]" in cfg and "slr=llmfab_engine_1:SLR0" in cfg
    assert (folder / "tokenizer.json").is_file() and program.tokenizer_dir == folder
    assert set(manifest["files"]) >= {"instructions.bin", "connectivity.cfg", "tokenizer.json", "hbm/pc00.bin"}
    assert program.limits.max_prefill_tokens == manifest["limits"]["max_prefill_tokens"]
    assert program.limits.max_context == manifest["limits"]["max_context"] > 0


@pytest.mark.parametrize("name", ["instructions.bin", "hbm/pc03.bin"])
def test_a_corrupted_file_is_named(program, tmp_path, name):
    folder = tmp_path / "copy"
    shutil.copytree(program.folder, folder)
    data = bytearray((folder / name).read_bytes())
    data[40] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(ProgramError, match=f"{name} does not match its sha256"):
        load_program(folder)


def test_a_program_for_another_engine_or_board_is_refused(program):
    small = HardwareConfig.from_preset("u280-small")
    with pytest.raises(ProgramError, match=r"built for board u280 .* but the hardware given is board u280 \(fingerprint"):
        load_program(program.folder, small)
    u55c = HardwareConfig.from_preset("u55c-default")
    with pytest.raises(ProgramError, match="given is board u55c"):
        load_program(program.folder, u55c)


def test_missing_folder_and_wrong_version(program, tmp_path):
    with pytest.raises(ProgramError, match="is not a program folder"):
        load_program(tmp_path / "nothing")
    folder = tmp_path / "copy"
    shutil.copytree(program.folder, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ProgramError, match="version 99"):
        load_program(folder)
