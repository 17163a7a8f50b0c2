"""Three-queue timing with VTA-style dependency tokens: hand-computed serial and overlapped cases."""

from __future__ import annotations

import numpy as np
import pytest

from llmfab.sim.cycle_queues import COMPUTE, LOAD, STORE, DependencyError, schedule


def run(rows):
    """rows: (unit, cycles, pop_prev, pop_next, push_prev, push_next)."""
    cols = list(zip(*rows))
    return schedule(*cols)


def test_without_tokens_units_run_in_parallel():
    s = run([(LOAD, 10, 0, 0, 0, 0), (COMPUTE, 7, 0, 0, 0, 0), (STORE, 3, 0, 0, 0, 0)])
    assert s.start.tolist() == [0, 0, 0]
    assert s.total_cycles == 10


def test_tokens_serialise_load_compute_store():
    s = run([(LOAD, 10, 0, 0, 0, 1), (COMPUTE, 7, 1, 0, 0, 1), (STORE, 3, 1, 0, 0, 0)])
    assert s.start.tolist() == [0, 10, 17]
    assert s.total_cycles == 20
    assert s.busy_cycles(COMPUTE) == 7 and s.stall_cycles(COMPUTE) == 10


def test_double_buffering_overlaps_loads_with_compute():
    # Two buffers: load i+2 waits until compute i has released its buffer (compute -> load token).
    rows = [(LOAD, 10, 0, 0, 0, 1), (LOAD, 10, 0, 0, 0, 1)]
    for i in range(4):
        rows.append((COMPUTE, 8, 1, 0, 1, 0))
        if i + 2 < 4:
            rows.append((LOAD, 10, 0, 1, 0, 1))
    s = run(rows)
    # Loads back to back (bandwidth-bound): 4 x 10; the last compute ends 8 cycles after the last load.
    assert s.total_cycles == 48
    serial = sum(r[1] for r in rows)
    assert s.total_cycles < serial


def test_single_buffer_is_serial():
    rows = [(LOAD, 10, 0, 0, 0, 1)]
    for i in range(3):
        rows.append((COMPUTE, 8, 1, 0, 1, 0))
        if i < 2:
            rows.append((LOAD, 10, 0, 1, 0, 1))
    s = run(rows)
    assert s.total_cycles == 3 * 18


def test_pop_before_push_in_program_order_waits_for_the_other_unit():
    # The store is listed first but must wait for the compute token.
    s = run([(STORE, 2, 1, 0, 0, 0), (COMPUTE, 5, 0, 0, 0, 1)])
    assert s.start.tolist() == [5, 0] and s.total_cycles == 7


def test_store_to_compute_tokens():
    s = run([(COMPUTE, 4, 0, 0, 0, 1), (STORE, 6, 1, 0, 1, 0), (COMPUTE, 4, 0, 1, 0, 0)])
    assert s.start.tolist() == [0, 4, 10]


def test_deadlock_names_the_address():
    with pytest.raises(DependencyError, match="address 12"):
        schedule([COMPUTE], [1], [1], [0], [0], [0], base_address=12)


def test_missing_neighbour_is_rejected():
    with pytest.raises(DependencyError, match="load has no previous neighbour"):
        run([(LOAD, 1, 1, 0, 0, 0)])
    with pytest.raises(DependencyError, match="store has no next neighbour"):
        run([(STORE, 1, 0, 0, 0, 1)])


def test_time_is_never_below_the_busiest_unit():
    rng = np.random.default_rng(0)
    units = rng.integers(0, 3, 200)
    cycles = rng.integers(1, 50, 200)
    zeros = np.zeros(200, bool)
    s = schedule(units, cycles, zeros, zeros, zeros, zeros)
    assert s.total_cycles == max(cycles[units == u].sum() for u in range(3))


def test_request_latency_overlaps_the_previous_transfer_only():
    # Back to back: the second request goes out while the first streams, so its 4 latency cycles hide.
    s = schedule([LOAD, LOAD], [10, 10], [0, 0], [0, 0], [0, 0], [0, 0], latency=[4, 4])
    assert s.end.tolist() == [10, 16]
    # After a token wait the unit was idle, so the latency is paid in full.
    s = schedule([COMPUTE, LOAD, LOAD], [20, 10, 10], [0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0],
                 latency=[0, 4, 4])
    assert s.end.tolist() == [20, 10, 30]


def test_transfers_share_a_pseudo_channel_but_not_disjoint_ones():
    units, cycles, zeros = [LOAD, STORE], [10, 6], [0, 0]
    same = schedule(units, cycles, zeros, zeros, zeros, zeros, channels=[(0, 32), (0, 32)])
    assert same.end.tolist() == [10, 16]  # the store waits for the channels the load holds
    apart = schedule(units, cycles, zeros, zeros, zeros, zeros, channels=[(0, 16), (16, 16)])
    assert apart.end.tolist() == [10, 6]
    overlap = schedule(units, cycles, zeros, zeros, zeros, zeros, channels=[(0, 16), (15, 2)])
    assert overlap.end.tolist() == [10, 16]
    compute = schedule([LOAD, COMPUTE], cycles, zeros, zeros, zeros, zeros, channels=[(0, 32), None])
    assert compute.end.tolist() == [10, 6]


def test_earliest_start_goes_first_across_units():
    # The store is ready at 0 and the load only after a compute token at 5: the store gets the channel first.
    s = schedule([COMPUTE, LOAD, STORE], [5, 10, 10], [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0],
                 channels=[None, (0, 1), (0, 1)])
    assert s.end.tolist() == [5, 20, 10]
