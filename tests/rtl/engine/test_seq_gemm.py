"""The GEMM sequencer against the emulator's handler on random tiles, on both simulators.

Cases cover every (weight bits, mode, HALF_ZERO) the ISA allows, A16 rows, K-split sequences
with the int64 accumulator carried in OUT, one and several tokens (more than the GEMM array's
token rows), k0 > 0, unaligned operands, extreme codes (all ±127, ±32767, zero scales,
saturating outputs), rows = 0, the operands the sequencer rejects, and exact cycle counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from llmfab.compiler.isa import Buffer, Flag, GemmMode, Instruction, Opcode, Registers, RowSource
from llmfab.compiler.weight_tiles import TileShape, pack_tile
from llmfab.rtl.engine.seq_gemm import GemmSequencer
from llmfab.rtl.sim_runner import simulator_params
from llmfab.sim import numerics as nx
from llmfab.tests.rtl.engine.bench import Case, check, expect, run_cases
from llmfab.tests.rtl.engine.geometries import TINY, WIDE32

ACT, WGT, OUT = int(Buffer.ACT), int(Buffer.WGT), int(Buffer.OUT)
MODES = (GemmMode.GEMV, GemmMode.GEMM, GemmMode.GEMV_SPARSE, GemmMode.GEMM_SPARSE)
# (geometry, decode_lanes, prefill_rows, prefill_cols, unit_products)
SHAPES = {"tiny": (TINY, 8, 2, 2, 4), "wide32": (WIDE32, 16, 3, 4, 4)}
MAX_DEPTH = 256


def shape_params() -> list:
    """(simulator, shape) pairs: the tiny shape on both simulators, the 32-byte-word shape on
    Icarus only (its Verilator build alone would add minutes to CI for the same RTL source)."""
    return [pytest.param(sim.values[0], shape, marks=sim.marks, id=f"{sim.id}-{shape}")
            for sim in simulator_params() for shape in SHAPES if shape == "tiny" or sim.values[0] == "icarus"]


def sequencer(shape: str) -> GemmSequencer:
    geometry, lanes, rows, cols, products = SHAPES[shape]
    return GemmSequencer(geometry, lanes, rows, cols, max_depth=MAX_DEPTH, unit_products=products)


@dataclass
class Layout:
    """Where a case puts its operands."""

    act: int = 0  # src0 (ACT)
    tile: int = 0  # src1 (WGT)
    dst: int = 2048  # dst (ACT with ACC_LAST)
    dst_stride: int = 0
    extra_cols: int = 0  # columns of the A8 row beyond k0 + K
    act_stride_pad: int = 0  # bytes added to the row stride


def random_tile(rng, n: int, k: int, g: int, bits: int, sparse: bool, half_zero: bool, extreme: str = ""):
    """Stored fields of a random tile: codes, zero points (doubled with half_zero), 16-bit
    multipliers (some zero), row shifts, 2:4 patterns."""
    kept = k // 2 if sparse else k
    groups = k // g
    codes = rng.integers(0, 1 << bits, (n, kept))
    zeros = rng.integers(0, (1 << (bits + 1)) - 1 if half_zero else 1 << bits, (n, groups))
    mantissas = rng.integers(0, 1 << 16, (n, groups))
    mantissas[:1, :1] = 0  # a zero scale
    shifts = rng.integers(14, 30, n)
    if extreme == "max":  # the largest |c - z|: every weight at the extreme
        codes[:] = (1 << bits) - 1
        zeros[:] = 0
        mantissas[:] = (1 << 16) - 1
    patterns = rng.integers(0, 6, (n, k // 4)) if sparse else None
    return codes, zeros, mantissas, shifts, patterns


def act_rows(rng, t: int, width: int, a16: bool, extreme: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [t, width], mantissas, exponents) of requantized random ACT32 rows."""
    x = rng.integers(-(1 << 24), 1 << 24, (t, width)) >> rng.integers(0, 16, (t, 1))
    if extreme == "max":
        x = np.where(np.arange(width) % 3 == 0, -(1 << 26), 1 << 26)[None].repeat(t, 0)
    if t > 1:
        x[1] = 0  # an all-zero token: codes 0, mantissa 0
    act = nx.requantize_per_token(x, 16 if a16 else 8)
    return act.codes, act.scale_mantissa, act.scale_exponent


def act_bytes(codes, mantissas, exponents, a16: bool, stride: int) -> bytes:
    rows = []
    for t in range(codes.shape[0]):
        row = np.array([mantissas[t], exponents[t]], dtype="<i4").tobytes()
        row += codes[t].astype("<i2" if a16 else "i1").tobytes()
        rows.append(row + bytes(stride - len(row)))
    return b"".join(rows)


def gemm_case(name: str, rng, mode: GemmMode, bits: int, t: int, n: int, k: int, g: int, *, flags: int,
              half_zero: bool = False, a16: bool = False, k0: int = 0, lay: Layout | None = None,
              extreme: str = "", tile=None, act=None) -> tuple[Case, tuple, tuple]:
    """One GEMM instruction on a random tile and random rows (or the given ones)."""
    lay = lay or Layout()
    sparse = GemmMode(mode).sparse
    shape = TileShape(n, k, g, bits, sparse, half_zero)
    tile = tile or random_tile(rng, n, k, g, bits, sparse, half_zero, extreme)
    codes, zeros, mantissas, shifts, patterns = tile
    width = k0 + k + lay.extra_cols
    act = act or act_rows(rng, t, width, a16, extreme)
    per_code = 2 if a16 else 1
    stride = 8 + -(-per_code * width // 8) * 8 + lay.act_stride_pad
    flags |= (Flag.HALF_ZERO if half_zero else 0) | (Flag.A16 if a16 else 0)
    inst = Instruction(Opcode.GEMM, mode=int(mode), flags=int(flags), sub=bits, rows_src=RowSource.TOKENS,
                       src0_buf=ACT, src0_addr=lay.act, imm=k0 | (stride << 16), src1_buf=WGT, src1_addr=lay.tile,
                       dst_buf=ACT, dst_addr=lay.dst, stride=lay.dst_stride, cols=n, depth=k, aux=g)
    inputs = [(WGT, lay.tile, pack_tile(shape, codes, zeros, mantissas, shifts, patterns)),
              (ACT, lay.act, act_bytes(*act, a16, stride))]
    if flags & Flag.ACC_LAST:
        row = lay.dst_stride or 4 * n
        outputs = [(ACT, lay.dst, (t - 1) * row + 4 * n)] if t else []
    else:
        outputs = [(OUT, 0, 8 * t * n)] if t else []
    return Case(name, inst, t, Registers(t, 0), inputs=inputs, outputs=outputs), tile, act


BOTH = int(Flag.ACC_FIRST | Flag.ACC_LAST)
COMBOS = [(bits, mode, half) for mode in MODES for bits in (2, 3, 4, 8) for half in (False, True)
          if not (half and bits == 8)]


def group_sizes(seq: GemmSequencer, mode: GemmMode) -> list[int]:
    """Group sizes the mode's core runs: powers of two from a MAC unit's columns up to below a
    beat's (several groups per beat), then one, two and three beats per group."""
    _, lanes, products = seq.core_shape(int(mode))
    scale = 2 if GemmMode(mode).sparse else 1
    unit, beat = products * scale, lanes * scale
    small = [unit << i for i in range(8) if unit << i < beat]
    return small + [beat, 2 * beat, 3 * beat]


def combo_cases(seq: GemmSequencer, seed: int) -> list[Case]:
    """A random tile of every (bits, mode, HALF_ZERO) the ISA allows: group sizes from several per
    beat to three beats per group, K ending inside a beat, 1 to 3 tokens, some A16."""
    rng = np.random.default_rng(seed)
    cases = []
    for index, (bits, mode, half) in enumerate(COMBOS):
        sizes = group_sizes(seq, mode)
        g = sizes[index % len(sizes)]
        k = g * (max(1, 32 // g) + index % 3)
        while k > MAX_DEPTH // 2:
            k -= g
        t = 1 + index % 3
        lay = Layout(act=8 * (index % 4), tile=64 * (index % 3), dst=2048 + 4 * (index % 5))
        name = f"{GemmMode(mode).name.lower()}_w{bits}{'_half' if half else ''}_g{g}_k{k}"
        cases.append(gemm_case(name, rng, mode, bits, t, 5 + index % 4, k, g, flags=BOTH, half_zero=half,
                               a16=index % 5 == 2, lay=lay)[0])
    return cases


def ksplit_cases(seed: int) -> list[Case]:
    """K-split linears: 2 and 3 tiles of one output block through the OUT accumulator, A8 and A16."""
    rng = np.random.default_rng(seed)
    cases = []
    for mode, bits, a16, parts, t in ((GemmMode.GEMV, 4, False, 3, 1), (GemmMode.GEMM_SPARSE, 2, False, 2, 3),
                                      (GemmMode.GEMM, 8, True, 2, 2), (GemmMode.GEMV_SPARSE, 3, True, 3, 2)):
        n, g = 6, 16
        k = 2 * g
        width = parts * k
        act = act_rows(rng, t, width, a16)
        for part in range(parts):
            flags = (Flag.ACC_FIRST if part == 0 else 0) | (Flag.ACC_LAST if part == parts - 1 else 0)
            cases.append(gemm_case(f"ksplit_{GemmMode(mode).name.lower()}_{part}", rng, mode, bits, t, n, k, g,
                                   flags=int(flags), a16=a16, k0=part * k, act=act,
                                   lay=Layout(tile=128 * part, extra_cols=width - (part + 1) * k))[0])
    return cases


def edge_cases(seed: int) -> list[Case]:
    """Extreme codes and weights (saturating outputs), A16 extremes, unaligned operands with a
    strided destination and k0 > 0, no rows."""
    rng = np.random.default_rng(seed)
    return [
        gemm_case("extreme_w8", rng, GemmMode.GEMV, 8, 2, 4, 32, 32, flags=BOTH, extreme="max")[0],
        gemm_case("extreme_a16_w4", rng, GemmMode.GEMM, 4, 3, 4, 16, 16, flags=BOTH, a16=True, extreme="max")[0],
        gemm_case("extreme_sparse_w2", rng, GemmMode.GEMM_SPARSE, 2, 2, 3, 32, 16, flags=BOTH, extreme="max")[0],
        gemm_case("a16_sparse_half", rng, GemmMode.GEMV_SPARSE, 4, 2, 5, 32, 16, flags=BOTH, a16=True,
                  half_zero=True)[0],
        gemm_case("strided_dst_k0", rng, GemmMode.GEMM, 3, 3, 5, 24, 8, flags=BOTH, k0=5,
                  lay=Layout(act=3, tile=320, dst=2051, dst_stride=37, act_stride_pad=3))[0],
        gemm_case("unaligned_gemv_k0", rng, GemmMode.GEMV_SPARSE, 2, 2, 3, 32, 16, flags=BOTH, k0=7,
                  lay=Layout(act=13, tile=100, dst=2047, dst_stride=29, act_stride_pad=5))[0],
        gemm_case("no_rows", rng, GemmMode.GEMV, 2, 0, 4, 16, 8, flags=BOTH)[0],
    ]


@pytest.mark.parametrize(("simulator", "shape"), shape_params())
def test_gemm_sequencer_every_format_equals_emulator(simulator, shape, tmp_path):
    seq = sequencer(shape)
    check(seq, combo_cases(seq, 11), simulator, tmp_path, f"seq_gemm_{shape}")


@pytest.mark.parametrize("simulator", simulator_params())
def test_gemm_sequencer_k_split_a16_and_edges_equal_emulator(simulator, tmp_path):
    cases = ksplit_cases(12) + edge_cases(13)
    runs = check(sequencer("tiny"), cases, simulator, tmp_path, "seq_gemm_tiny")
    extreme = np.frombuffer(expect(TINY, cases)[1][len(ksplit_cases(12))][0], "<i4")
    assert np.abs(extreme).max() == 2 ** 31 - 1 or extreme.min() == -2 ** 31, "the W8 extreme case should saturate"
    assert all(run.cycles for run in runs)


def error_cases(seed: int) -> list[tuple[Case, str]]:
    """(case, kind): instructions the sequencer rejects before writing anything ("static") or
    after computing, where the emulator raises or the MAC's operand ranges end ("runtime")."""
    rng = np.random.default_rng(seed)
    plain = lambda name, **kw: gemm_case(name, rng, GemmMode.GEMV, 4, 2, 3, 32, 16, flags=BOTH, **kw)[0]  # noqa: E731
    sparse = gemm_case("pattern_code_6", rng, GemmMode.GEMV_SPARSE, 2, 1, 3, 32, 16, flags=BOTH)
    codes, zeros, mantissas, shifts, patterns = sparse[1]
    patterns[1, 2] = 6
    bad_pattern = gemm_case("pattern_code_6", rng, GemmMode.GEMV_SPARSE, 2, 1, 3, 32, 16, flags=BOTH,
                            tile=(codes, zeros, mantissas, shifts, patterns))[0]
    header = plain("header_mantissa_2_16")
    act = bytearray(header.inputs[1][2])
    act[0:4] = (1 << 16).to_bytes(4, "little")
    header.inputs[1] = (ACT, header.inputs[1][1], bytes(act))
    exponent = plain("header_exponent_40")
    act = bytearray(exponent.inputs[1][2])
    act[4:8] = (40).to_bytes(4, "little", signed=True)
    exponent.inputs[1] = (ACT, exponent.inputs[1][1], bytes(act))
    overflow = gemm_case("y_beyond_48_bits", rng, GemmMode.GEMV, 4, 1, 3, 32, 16, flags=int(Flag.ACC_LAST))[0]
    overflow.inputs.append((OUT, 0, np.full(3, 1 << 50, dtype="<i8").tobytes()))
    replaced = lambda case, name, **fields: Case(name, case.inst.replace(**fields), case.rows, case.regs,  # noqa: E731
                                                 case.inputs, case.outputs)
    static = [
        replaced(plain("m"), "mode_4", mode=4),
        replaced(plain("b"), "bits_5", sub=5),
        replaced(gemm_case("h", rng, GemmMode.GEMV, 8, 1, 3, 32, 16, flags=BOTH)[0], "half_zero_w8",
                 flags=BOTH | int(Flag.HALF_ZERO)),
        replaced(plain("k"), "depth_not_a_multiple_of_g", depth=24),
        gemm_case("group_12_on_8_lanes", rng, GemmMode.GEMV, 4, 1, 3, 24, 12, flags=BOTH)[0],
        gemm_case("depth_above_max", rng, GemmMode.GEMV, 2, 1, 2, 2 * MAX_DEPTH, 64, flags=BOTH)[0],
        replaced(plain("z"), "depth_0", depth=0),
        plain("dst_overlaps_src0", lay=Layout(dst=40)),
        replaced(plain("t"), "dst_overlaps_tile", dst_buf=WGT, dst_addr=100),
        replaced(gemm_case("a", rng, GemmMode.GEMV, 4, 1, 3, 32, 16, flags=int(Flag.ACC_LAST))[0],
                 "dst_overlaps_accumulator", dst_buf=OUT, dst_addr=8),
        replaced(plain("e"), "tile_past_28_bit_addresses", src1_addr=(1 << 28) - 64),
    ]
    runtime = [bad_pattern, header, exponent, overflow]
    return [(c, "static") for c in static] + [(c, "runtime") for c in runtime]


@pytest.mark.parametrize("simulator", simulator_params())
def test_gemm_sequencer_raises_error_for_what_it_does_not_execute(simulator, tmp_path):
    seq = sequencer("tiny")
    kinds = error_cases(14)
    cases = [case for case, _ in kinds]
    rng = np.random.default_rng(15)
    loads, canary = [], []
    for case in cases:  # the destination starts as random bytes, which a rejected instruction leaves alone
        before = [(b, a, rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for b, a, n in case.outputs]
        loads.append([*((b, a, p.hex()) for b, a, p in case.inputs), *((b, a, p.hex()) for b, a, p in before)])
        canary.append([p for _, _, p in before])
    runs = run_cases(seq, cases, loads, simulator, tmp_path, "seq_gemm_tiny")
    for (case, kind), run, kept in zip(kinds, runs, canary):
        assert run.cycles is not None and run.error, f"case {case.name}: no error raised"
        if kind == "static":
            assert run.reads == kept, f"case {case.name}: a rejected instruction wrote its destination"
    with pytest.raises(ValueError):  # the emulator rejects the 2:4 pattern code 6 too
        expect(TINY, [next(c for c in cases if c.name == "pattern_code_6")])
    with pytest.raises(OverflowError):  # and a row sum beyond 48 bits
        expect(TINY, [next(c for c in cases if c.name == "y_beyond_48_bits")])


def timed_cases(seq: GemmSequencer, seed: int) -> list[tuple[Case, int]]:
    """Aligned instructions of every mode (several token groups, A16, accumulator reads) and the
    cycles the formula gives for them."""
    rng = np.random.default_rng(seed)
    w = seq.geometry.word_bytes
    out = []
    for mode, a16, t, n, k, flags in ((GemmMode.GEMV, False, 1, 6, 64, BOTH), (GemmMode.GEMV, True, 2, 3, 32, 2),
                                      (GemmMode.GEMM, False, 5, 4, 32, BOTH), (GemmMode.GEMV_SPARSE, False, 1, 5, 64, 2),
                                      (GemmMode.GEMM_SPARSE, True, 3, 3, 64, BOTH)):
        rows, lanes, products = seq.core_shape(int(mode))
        g = 2 * lanes if GemmMode(mode).sparse else lanes
        # rows start 8 bytes before a word, so every token's codes are word-aligned
        stride = -(-(8 + (2 if a16 else 1) * k) // w) * w
        lay = Layout(act=w - 8, dst=2048, act_stride_pad=stride - (8 + -(-(2 if a16 else 1) * k // 8) * 8))
        case = gemm_case(f"timed_{GemmMode(mode).name.lower()}{'_a16' if a16 else ''}_t{t}", rng, mode, 4, t, n, k,
                         g, flags=flags, a16=a16, lay=lay)[0]
        out.append((case, GemmSequencer.cycles(w, lanes, products, rows, t, n, k, GemmMode(mode).sparse, a16)))
    return out


@pytest.mark.parametrize(("simulator", "shape"), shape_params())
def test_gemm_sequencer_cycles_follow_the_formula(simulator, shape, tmp_path):
    seq = sequencer(shape)
    timed = timed_cases(seq, 16)
    runs = check(seq, [case for case, _ in timed], simulator, tmp_path, f"seq_gemm_{shape}")
    for (case, want), run in zip(timed, runs):
        assert run.cycles == want, f"case {case.name}: {run.cycles} cycles, the formula says {want}"
