"""The combinational fixed-point helpers against llmfab.sim.fixed_point, in Amaranth's own
simulator (no HDL simulator needed): rounding shifts by constants and signals, signed shifts
with saturation (the left-shift path no unit test reaches), saturation, leading-one detection
and normalisation."""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from llmfab.rtl.units.arith import (
    absolute,
    bit_length,
    normalize16,
    round_shift,
    round_shift_by,
    saturate,
    shift_add_multiply,
    shift_round_saturate,
)
from llmfab.sim import numerics
from llmfab.sim.linear_ops import shift_saturate


def _evaluate(inputs: dict[str, Signal], outputs: dict, vectors: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Drive the combinational `outputs` (name -> value of `inputs`) with every vector; return the results."""
    m = Module()
    probes = {name: Signal(value.shape(), name=name) for name, value in outputs.items()}
    m.d.comb += [probes[name].eq(value) for name, value in outputs.items()]
    results = {name: [] for name in outputs}

    async def bench(ctx):
        for k in range(len(next(iter(vectors.values())))):
            for name, signal in inputs.items():
                ctx.set(signal, int(vectors[name][k]))
            for name, probe in probes.items():
                results[name].append(ctx.get(probe))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_round_shifts_and_saturation_match_fixed_point():
    rng = np.random.default_rng(80)
    count = 400
    v = np.concatenate([rng.integers(-(1 << 47), 1 << 47, count - 8),
                        [0, -1, 1, -(1 << 47), (1 << 47) - 1, -5, 5, -3]])
    s = rng.integers(0, 60, count)
    signed_shift = rng.integers(-40, 40, count)
    value = Signal(signed(48))
    shift = Signal(unsigned(6))
    shift_s = Signal(signed(8))
    got = _evaluate({"v": value, "s": shift, "t": shift_s},
                    {"by": round_shift_by(value, shift), "const": round_shift(value, 7),
                     "sat": saturate(value, 20), "sat_u": saturate(value, 20, is_signed=False),
                     "signed": shift_round_saturate(value, shift_s, 32)},
                    {"v": v, "s": s, "t": signed_shift})
    assert got["by"] == numerics.round_shift(v, s).tolist()
    assert got["const"] == numerics.round_shift(v, 7).tolist()
    assert got["sat"] == numerics.saturate(v, 20).tolist()
    assert got["sat_u"] == numerics.saturate(v, 20, signed=False).tolist()
    assert got["signed"] == shift_saturate(v, signed_shift).tolist()
    assert np.any(signed_shift < 0) and np.any(np.abs(got["signed"]) == 2 ** 31 - 1)


def test_leading_one_normalisation_and_absolute_match_fixed_point():
    rng = np.random.default_rng(81)
    exponents = rng.integers(0, 40, 300)
    m = np.concatenate([(rng.integers(0, 1 << 40, 300) >> (40 - exponents - 1)) | (np.int64(1) << exponents),
                        [1, 2, 3, (1 << 40) - 1, 1 << 39, 65535, 65536]])
    x = Signal(unsigned(40))
    lead = bit_length(x) - 1
    got = _evaluate({"x": x}, {"length": bit_length(x), "u": normalize16(x, lead[:6])}, {"x": m})
    u, _ = numerics.normalize_mantissa(m, 16)
    assert got["length"] == numerics.bit_length(m).tolist()
    assert got["u"] == u.tolist()
    y = Signal(signed(32))
    values = np.array([0, 1, -1, -(1 << 31), (1 << 31) - 1, -12345])
    assert _evaluate({"y": y}, {"a": absolute(y)}, {"y": values})["a"] == np.abs(values).tolist()


def test_every_catalog_unit_elaborates():
    """Each unit of the catalog elaborates (its stage counts are checked against its documented
    latency while elaborating)."""
    from amaranth.hdl import Fragment

    from llmfab.rtl.units.catalog import unit_catalog

    for build in unit_catalog(lanes=2, max_beats=4).values():
        Fragment.get(build(), None)


def test_newton_error_terms_fit_the_widths_the_units_give_them():
    """The reciprocal and rsqrt units keep the Newton error term in ERROR_BITS (one DSP48E2 for
    the correction); the term depends only on the 16-bit mantissa, so all of them are checked."""
    from llmfab.rtl.units import reciprocal, rsqrt
    from llmfab.sim.special_functions import reciprocal_table, rsqrt_table

    u = np.arange(1 << 15, 1 << 16, dtype=np.int64)
    r0 = reciprocal_table()[(u >> 8) - 128]
    limit = 1 << (reciprocal.ERROR_BITS - 1)
    assert np.all(np.abs((1 << 31) - u * r0) < limit)
    for odd in (0, 1):
        y0 = rsqrt_table()[odd * 64 + (u >> 9) - 64]
        error = (1 << 31) - (u << odd) * numerics.round_shift(y0 * y0, 16)
        assert np.all(np.abs(error) < 1 << (rsqrt.ERROR_BITS - 1))


def test_shift_add_multiply_matches_products():
    a, w, u = Signal(signed(8)), Signal(signed(5)), Signal(unsigned(4))
    rng = np.random.default_rng(82)
    av = np.concatenate([rng.integers(-128, 128, 200), [-128, 127, 0, -127]])
    wv = np.resize(np.arange(-16, 16), len(av))
    uv = np.resize(np.arange(16), len(av))
    got = _evaluate({"a": a, "w": w, "u": u}, {"p": shift_add_multiply(a, w), "q": shift_add_multiply(a, u)},
                    {"a": av, "w": wv, "u": uv})
    assert got["p"] == (av * wv).tolist() and got["q"] == (av * uv).tolist()
