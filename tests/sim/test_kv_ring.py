"""Slot, position and block arithmetic of the Λ cache (sim/kv_ring.py) against brute-force
definitions and the torch caches of quant/."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.kv_cache_4bit import Kv4BlockRing
from llmfab.sim.kv_ring import (
    NEVER,
    BlockLayout,
    LambdaShape,
    chunk_keys,
    key_positions,
    query_positions,
    reads_stored,
    ring_full,
    slot_keys,
    token_slot,
    visibility,
    window_start,
)

SHAPES = [LambdaShape(2, 8), LambdaShape(0, 5), LambdaShape(4, 1), LambdaShape(3, 6)]
STREAM = 40


def brute_force_view(shape: LambdaShape, i: int) -> dict[int, int]:
    """{key stream index: RoPE position} of query i, from the StreamingLLM description: the sinks
    stored so far at 0..S-1, then the last W non-sink tokens (itself included) contiguously."""
    sinks = list(range(min(i + 1, shape.sinks)))
    window = [j for j in range(shape.sinks, i + 1)][-shape.window:]
    return {j: slot for slot, j in enumerate(sinks + window)}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_visibility_and_positions_match_the_streaming_llm_layout(shape):
    queries, keys = np.arange(STREAM), np.arange(STREAM)
    visible, positions = visibility(shape, queries, keys), key_positions(shape, queries, keys)
    for i in queries:
        view = brute_force_view(shape, int(i))
        assert set(np.flatnonzero(visible[i])) == set(view)
        assert {int(j): int(positions[i, j]) for j in view} == view
        assert query_positions(shape, [i])[0] == len(view) - 1  # the query is its own last slot
    assert positions[visible].max() == shape.slots - 1  # positions never reach S + W


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_distances_are_those_of_the_torch_kernel(shape):
    """quant/lambda_attention.py rotates by relative distance: i - j in the window and
    min(i, S+W-1) - s to a sink; slot positions give the same differences."""
    queries, keys = np.arange(STREAM), np.arange(STREAM)
    visible = visibility(shape, queries, keys)
    distance = query_positions(shape, queries)[:, None] - key_positions(shape, queries, keys)
    expected = np.where(keys[None, :] < shape.sinks, np.minimum(queries, shape.slots - 1)[:, None] - keys[None, :],
                        queries[:, None] - keys[None, :])
    assert np.array_equal(distance[visible], expected[visible])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("count", [1, 3, 11])
def test_chunk_keys_is_the_union_of_what_its_queries_see(shape, count):
    for start in range(0, STREAM - count):
        queries = np.arange(start, start + count)
        union = np.flatnonzero(visibility(shape, queries, np.arange(STREAM)).any(axis=0))
        assert np.array_equal(chunk_keys(shape, start, count), union)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_full_ring_queries_see_slot_keys_in_position_order(shape):
    queries = np.arange(STREAM)
    full = queries[ring_full(shape, queries)]
    assert full[0] == shape.slots - 1 and len(full) == STREAM - shape.slots + 1
    for i, keys in zip(full, slot_keys(shape, full)):
        view = brute_force_view(shape, int(i))
        assert [view[int(j)] for j in keys] == list(range(shape.slots))
    before = queries[~ring_full(shape, queries)]
    positions = key_positions(shape, before, queries)
    visible = visibility(shape, before, queries)
    assert np.array_equal(positions[visible], np.broadcast_to(queries, positions.shape)[visible])  # j itself


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_token_slots_of_what_a_query_sees_are_distinct_and_inside_the_cache(shape):
    for i in range(STREAM):
        keys = np.flatnonzero(visibility(shape, [i], np.arange(STREAM))[0])
        slots = token_slot(shape, keys)
        assert len(set(slots.tolist())) == len(keys) and slots.min() >= 0 and slots.max() < shape.slots


def test_window_start_of_a_sink_query_is_past_it():
    assert window_start(LambdaShape(4, 8), [0, 3, 4, 11, 12]).tolist() == [4, 4, 4, 4, 5]


@pytest.mark.parametrize(("capacity", "block"), [(8, 4), (10, 4), (5, 5), (7, 3)])
def test_held_blocks_match_the_torch_block_ring(capacity, block):
    """Same eviction as quant/kv_cache_4bit.Kv4BlockRing, for appends of assorted sizes."""
    layout = BlockLayout(first=3, capacity=capacity, block_tokens=block)
    ring = Kv4BlockRing(capacity, block)
    appended = 0
    sizes = np.random.default_rng(0).integers(1, 2 * capacity, size=20)
    for size in sizes:
        ring.append(torch.randn(1, 1, int(size), 4))
        appended += int(size)
        first, stop = layout.held_blocks(appended)
        assert stop - first == len(ring._blocks) <= layout.block_slots
        assert stop == appended // block
        held_from = layout.first + first * block
        assert held_from <= layout.first + appended - min(appended, capacity)  # the last W stay readable
        slots = layout.block_slot(np.arange(first, stop))
        assert len(set(slots.tolist())) == stop - first


def test_block_arithmetic_and_ready_at():
    window = BlockLayout.window(LambdaShape(2, 8), block_tokens=4)
    assert (window.first, window.block_tokens, window.block_slots) == (2, 4, 2)
    assert window.block_of([2, 5, 6, 13]).tolist() == [0, 0, 1, 2]
    assert window.ready_at([2, 5, 6, 13]).tolist() == [5, 5, 9, 13]
    sinks = BlockLayout.sinks(LambdaShape(5, 8), block_tokens=4)
    assert sinks.ready_at(np.arange(5)).tolist() == [3, 3, 3, 3, NEVER]  # the fifth sink's block never fills
    assert BlockLayout.sinks(LambdaShape(2, 8), block_tokens=32).block_tokens == 2


def test_a_query_reads_a_token_stored_once_its_block_was_complete_by_its_own_token():
    window = BlockLayout.window(LambdaShape(2, 8), block_tokens=4)
    ready = window.ready_at(np.arange(2, 10))  # blocks 2-5 and 6-9
    reads = reads_stored([4, 5, 9], ready)
    assert reads.tolist() == [[False] * 8, [True] * 4 + [False] * 4, [True] * 8]
    assert np.array_equal(reads_stored([4, 5], np.stack([ready, ready])), reads[:2])  # per-query ready_at


@pytest.mark.parametrize(("sinks", "window"), [(-1, 4), (2, 0), (2, 2.5), (True, 4)])
def test_bad_shapes_are_refused(sinks, window):
    with pytest.raises(InputError, match="whole number"):
        LambdaShape(sinks, window)


def test_block_longer_than_the_store_is_refused():
    with pytest.raises(InputError, match="capacity"):
        BlockLayout(first=0, capacity=4, block_tokens=8)
