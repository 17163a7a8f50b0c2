"""The tiny random model quantized and compiled through the CLI, built once per test session
(a folder under pytest's base temp, so the host tests and the CLI tests share it)."""

from __future__ import annotations

import pytest

from llmfab.cli import main

FAST_CALIBRATION = ["--calib-samples", "2", "--calib-seq-len", "32"]


def quantize_and_compile(hf_folder, tmp_path_factory, name: str, *options: str, preset: str = "w4a8kv4"):
    """(artifact folder, program folder): `llmfab quantize` ``preset`` with ``options``, then
    `llmfab compile --board u280`; reused if this session built it already."""
    root = tmp_path_factory.getbasetemp() / name
    artifact, program = root / preset, root / f"{preset}.program"
    if not (program / "manifest.json").is_file():
        assert main(["quantize", str(hf_folder), "--preset", preset, "-o", str(artifact),
                     *FAST_CALIBRATION, *options]) == 0
        assert main(["compile", str(artifact), "--board", "u280", "-o", str(program)]) == 0
    return artifact, program


@pytest.fixture(scope="session")
def tiny_program(tiny_hf_folder, tmp_path_factory):
    """The tiny model with the w4a8kv4 preset (per-channel key blocks, per-token values)."""
    return quantize_and_compile(tiny_hf_folder, tmp_path_factory, "tiny-program")


@pytest.fixture(scope="session")
def tiny_per_token_program(tiny_hf_folder, tmp_path_factory):
    """w4a8kv4 with per-token keys too: every token is quantized on its own, so where prefill
    chunks end cannot change any result (docs/numerics.md §6.4, §13.3)."""
    return quantize_and_compile(tiny_hf_folder, tmp_path_factory, "tiny-per-token",
                                "--kv-granularity", "per-token")


@pytest.fixture(scope="session")
def tiny_lambda_program(tiny_hf_folder, tmp_path_factory):
    """The tiny model with the accllm preset (2:4, W2A8KV4) and a small Λ: 2 sinks + 16 window,
    so a stream of a few dozen tokens wraps the ring."""
    return quantize_and_compile(tiny_hf_folder, tmp_path_factory, "tiny-lambda", "--sinks", "2",
                                "--window", "16", "--qat-steps", "0", preset="accllm")
