"""EMBED sequencer against the emulator's handler (sim/emulator_ops.embed_rows) on both simulators."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.compiler.isa import Flag, Instruction, Opcode, Registers, RowSource
from llmfab.compiler.memory_plan import embed_stride
from llmfab.rtl.engine.seq_embed import EmbedSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.tests.rtl.engine.bench import Case
from llmfab.tests.rtl.engine.row_cases import ACT, GEOMETRIES, check_geometry


def embedding_rows(rng, rows: int, cols: int, stride: int, shifts=None, extremes: bool = False) -> bytes:
    """`rows` embedding rows at `stride` bytes: random mantissas, zeros, codes and row shifts
    (the compiler's `16 - E` range unless `shifts` are given); `extremes` puts the format's limits
    in the first rows."""
    out = bytearray(rng.integers(0, 256, max(stride * (rows - 1) + 8 + cols, 0), dtype=np.uint8).tobytes())
    for r in range(rows):
        mantissa, zero = int(rng.integers(1, 1 << 16)), int(rng.integers(0, 1 << 9))
        shift = int(rng.integers(-8, 40)) if shifts is None else int(shifts[r % len(shifts)])
        codes = rng.integers(0, 256, cols)
        if extremes:
            mantissa, zero = [(65535, 65535), (65535, 0), (2, 255), (65535, 1)][r % 4]
            codes = np.resize(np.array([0, 255, 1, 254, 128]), cols)
        header = np.array([mantissa, shift & 0xFFFF, zero, int(rng.integers(0, 1 << 16))], dtype="<u2")
        out[r * stride:r * stride + 8] = header.tobytes()
        out[r * stride + 8:r * stride + 8 + cols] = codes.astype(np.uint8).tobytes()
    return bytes(out)


def embed_case(name, rng, rows, cols, src, dst, stride=None, flags=0, **kw) -> Case:
    stride = embed_stride(cols) if stride is None else stride
    inst = Instruction(Opcode.EMBED, rows_src=RowSource.TOKENS, src0_buf=ACT, src0_addr=src, dst_buf=ACT,
                       dst_addr=dst, cols=cols, stride=stride, flags=flags)
    inputs = [(ACT, src, embedding_rows(rng, rows, cols, stride, **kw))] if rows else []
    return Case(name, inst, rows, Registers(rows, 0), inputs=inputs, outputs=[(ACT, dst, 4 * rows * cols + 8)])


def cases(lanes: int, seed: int) -> tuple[list[Case], set[str]]:
    rng = np.random.default_rng(seed)
    n = 4 * lanes  # a whole number of beats
    out = [
        embed_case("aligned", rng, 3, n, 0, 512),
        embed_case("half_zero", rng, 2, n + 3, 8, 1024, flags=int(Flag.HALF_ZERO)),
        embed_case("odd_unaligned", rng, 3, 13, 5, 1502, stride=29),
        embed_case("one_row", rng, 1, 7, 3, 2049),
        # limits: w = 2·255 − 0, 0 − 65535 with M = 65535; shifts from a 63-bit left shift (saturating)
        # to 40 (everything rounds to 0); int16 extremes. (M ≠ 1 keeps w·M ≠ −1 under shifts below −48,
        # where the emulator's int64 left shift of −1 gives 0 instead of saturating.)
        embed_case("extremes", rng, 4, 2 * lanes + 1, 16, 600, extremes=True, flags=int(Flag.HALF_ZERO),
                   shifts=[-47, 16, 56, -32768]),
        embed_case("extremes_plain", rng, 4, 9, 200, 3000, extremes=True, shifts=[32767, -48, 0, 17]),
        embed_case("stride_zero", rng, 2, 6, 40, 1300, stride=0),
        embed_case("no_rows", rng, 0, 8, 0, 700),
        embed_case("no_cols", rng, 2, 0, 0, 700),
        embed_case("overlap", rng, 2, 8, 0, 16),  # dst over the source rows: error
    ]
    return out, {"overlap"}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("simulator", simulator_params())
def test_embed_sequencer_equals_emulator(geometry, simulator, tmp_path):
    g, _, runs = check_geometry(EmbedSequencer, cases, geometry, simulator,
                                        tmp_path, "embed", 7)
    assert runs["aligned"].cycles == EmbedSequencer.cycles(3, 4 * g.sfu_lanes, g.sfu_lanes)
    assert runs["no_rows"].cycles == runs["no_cols"].cycles == 1  # done in the check cycle
