"""Seeded random inputs with the edge cases every unit test needs (ACT32 values, magnitudes)."""

from __future__ import annotations

import numpy as np

from llmfab.sim.fixed_point import ACT32

ACT32_EDGES = np.array([0, 1, -1, 2, -2, ACT32.max_int, ACT32.min_int, ACT32.max_int - 1, ACT32.min_int + 1,
                        1 << 16, -(1 << 16), (1 << 15), -(1 << 15), 32767, -32768, 65535, -65537], dtype=np.int64)


def act32_values(rng: np.random.Generator, count: int, lanes: int = 1) -> np.ndarray:
    """`count` ACT32 values (rounded up to a multiple of `lanes`): log-uniform magnitudes over all
    32 bits with random signs, the format's extremes, small integers and powers of two."""
    exponents = rng.integers(0, 32, count)
    magnitude = rng.integers(0, 1 << 31, count) >> (31 - exponents)
    values = np.where(rng.random(count) < 0.5, -magnitude, magnitude)
    values = np.clip(np.concatenate([values, ACT32_EDGES]), ACT32.min_int, ACT32.max_int)
    return np.resize(values, -(-len(values) // lanes) * lanes)


def act32_rows(rng: np.random.Generator, rows: int, length: int) -> np.ndarray:
    """`rows` ACT32 rows of `length` values, each row with its own magnitude (2^0 .. 2^31), plus an
    all-zero row, a row of one nonzero value, and rows at the format's extremes."""
    scales = np.int64(1) << rng.integers(0, 32, rows)
    body = (rng.standard_normal((rows, length)) * scales[:, None] / 3).round()
    body = np.clip(body, ACT32.min_int, ACT32.max_int).astype(np.int64)
    zero = np.zeros((1, length), dtype=np.int64)
    single = zero.copy()
    single[0, rng.integers(length)] = -5
    extremes = np.resize(np.array([ACT32.min_int, ACT32.max_int], dtype=np.int64), (1, length))
    constant = np.full((1, length), 12345, dtype=np.int64)
    return np.concatenate([body, zero, single, extremes, constant])
