"""The engine's three instruction queues (LOAD, COMPUTE, STORE) and their dependency tokens, timed.

The units form a chain LOAD <-> COMPUTE <-> STORE, as in the VTA design. Each unit runs its own
instructions in program order, one at a time. Between two neighbours there are two token queues,
one per direction. An instruction may POP a token from its previous and/or next neighbour before
it starts, and PUSH a token to either neighbour when it ends:

    LOAD.push_next    -> load_to_compute  -> COMPUTE.pop_prev
    COMPUTE.push_prev -> compute_to_load  -> LOAD.pop_next
    COMPUTE.push_next -> compute_to_store -> STORE.pop_prev
    STORE.push_prev   -> store_to_compute -> COMPUTE.pop_next

The k-th pop of a queue takes the k-th token pushed into it, so an instruction starts at
    start = max(end of the unit's previous instruction, time each popped token was pushed)
and ends at start + its latency. LOAD has no previous and STORE no next neighbour; a program
that asks for one is rejected. The instruction fetch and the command queues in front of the
units are taken as deep enough never to stall (the real engine's depth is a parameter of the
RTL; the assumption is listed in docs/performance.md).

`schedule` works on plain arrays so the per-instruction latencies can be computed vectorised
per instruction class; it is the only place where time advances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.errors import InputError

LOAD, COMPUTE, STORE = 0, 1, 2
UNIT_NAMES = ("load", "compute", "store")
# Token queues, indexed: 0 load->compute, 1 compute->load, 2 compute->store, 3 store->compute.
L2C, C2L, C2S, S2C = 0, 1, 2, 3
# For each unit: the queue its pop_prev / pop_next / push_prev / push_next uses (-1: no neighbour).
_POP_PREV = (-1, L2C, C2S)
_POP_NEXT = (C2L, S2C, -1)
_PUSH_PREV = (-1, C2L, S2C)
_PUSH_NEXT = (L2C, C2S, -1)


class DependencyError(InputError):
    """The program's dependency tokens cannot be honoured (a deadlock or a missing neighbour)."""


@dataclass(frozen=True)
class Schedule:
    """When each instruction ran, in cycles from the start of the routine."""

    start: np.ndarray
    end: np.ndarray
    unit: np.ndarray

    @property
    def total_cycles(self) -> float:
        return float(self.end.max()) if self.end.size else 0.0

    def busy_cycles(self, unit: int) -> float:
        mask = self.unit == unit
        return float((self.end[mask] - self.start[mask]).sum())

    def stall_cycles(self, unit: int) -> float:
        """Cycles the unit waited for tokens between its instructions (before the routine ended)."""
        mask = self.unit == unit
        if not mask.any():
            return 0.0
        return float(self.end[mask].max() - self.busy_cycles(unit))


def schedule(unit, cycles, pop_prev, pop_next, push_prev, push_next, base_address: int = 0,
             latency=None, channels=None) -> Schedule:
    """Time a stream of instructions on the three units honouring their dependency tokens.

    All arguments are equal-length sequences, one entry per instruction in program order: the
    unit (LOAD/COMPUTE/STORE), its latency in cycles and its four token flags. Raises
    DependencyError naming the instruction address (base_address + index) if a unit waits for a
    token nobody pushes, or if an instruction uses a neighbour its unit does not have.

    `latency` (optional, per instruction, part of `cycles`) is a request latency the unit can
    overlap with its previous instruction: the request goes out as soon as the tokens allow, so
    the data phase starts at max(unit free, ready + latency) — outstanding AXI reads.

    `channels` (optional, per instruction: (first, count) or None) are the HBM pseudo-channels a
    transfer occupies for its data phase. A pseudo-channel carries one transfer at a time, so a
    LOAD and a STORE on the same channels share their bandwidth (they take turns), while transfers
    on disjoint channels overlap. Instructions are started in order of their earliest possible start
    over all units (a list scheduler), so channels are granted first come, first served.
    """
    unit = np.asarray(unit, dtype=np.int64)
    cycles = np.asarray(cycles, dtype=np.float64)
    flags = [np.asarray(f, dtype=bool) for f in (pop_prev, pop_next, push_prev, push_next)]
    n = unit.size
    if cycles.shape != (n,) or any(f.shape != (n,) for f in flags):
        raise ValueError("schedule: unit, cycles and the four flag arrays must have one entry per instruction")
    if n and (unit.min() < 0 or unit.max() > STORE):
        bad = int(np.flatnonzero((unit < 0) | (unit > STORE))[0])
        raise DependencyError(f"instruction at address {base_address + bad}: unknown unit {int(unit[bad])}")
    if n and cycles.min() < 0:
        bad = int(np.flatnonzero(cycles < 0)[0])
        raise ValueError(f"instruction at address {base_address + bad}: negative latency {cycles[bad]}")
    _check_neighbours(unit, flags, base_address)

    order = [np.flatnonzero(unit == u).tolist() for u in range(3)]
    pop_queues = [_queues_of(unit, flags[0], _POP_PREV), _queues_of(unit, flags[1], _POP_NEXT)]
    push_queues = [_queues_of(unit, flags[2], _PUSH_PREV), _queues_of(unit, flags[3], _PUSH_NEXT)]
    waits_of = [[q for q in (a, b) if q >= 0] for a, b in zip(*pop_queues)]
    pushes_of = [[q for q in (a, b) if q >= 0] for a, b in zip(*push_queues)]
    cyc = cycles.tolist()
    lat = [0.0] * n if latency is None else np.minimum(np.asarray(latency, dtype=np.float64), cycles).tolist()
    chans = [None] * n if channels is None else list(channels)
    channel_free = [0.0] * (1 + max((c[0] + c[1] for c in chans if c), default=0))
    start = [0.0] * n
    end = [0.0] * n
    pushed: list[list[float]] = [[], [], [], []]  # push times per token queue
    popped = [0, 0, 0, 0]
    head = [0, 0, 0]
    free = [0.0, 0.0, 0.0]
    for _ in range(n):
        best_u, best_t, best_ready = -1, 0.0, 0.0
        for u in range(3):
            if head[u] == len(order[u]):
                continue
            i = order[u][head[u]]
            ready = 0.0
            for q in waits_of[i]:
                if popped[q] >= len(pushed[q]):
                    break  # its token is not pushed yet
                ready = max(ready, pushed[q][popped[q]])
            else:
                t = max(free[u], ready)
                if best_u < 0 or t < best_t:
                    best_u, best_t, best_ready = u, t, ready
        if best_u < 0:
            stuck = min(order[u][head[u]] for u in range(3) if head[u] < len(order[u]))
            raise DependencyError(
                f"instruction at address {base_address + stuck} ({UNIT_NAMES[unit[stuck]]}) waits for a "
                "dependency token that no earlier-runnable instruction pushes: the program deadlocks. "
                "Recompile it; if it persists the scheduler emitted unbalanced push/pop flags.")
        u = best_u
        i = order[u][head[u]]
        head[u] += 1
        for q in waits_of[i]:
            popped[q] += 1
        data = max(free[u], best_ready + lat[i])
        span = chans[i]
        if span:
            first, count = span
            data = max(data, max(channel_free[first:first + count]))
        finish = data + cyc[i] - lat[i]
        if span:
            channel_free[first:first + count] = [finish] * count
        start[i] = best_t
        end[i] = free[u] = finish
        for q in pushes_of[i]:
            pushed[q].append(finish)
    return Schedule(start=np.asarray(start), end=np.asarray(end), unit=unit)


def _queues_of(unit: np.ndarray, flag: np.ndarray, table: tuple[int, int, int]) -> list[int]:
    return np.where(flag, np.asarray(table)[unit], -1).tolist()


def _check_neighbours(unit: np.ndarray, flags: list[np.ndarray], base_address: int) -> None:
    names = ("pop_prev", "pop_next", "push_prev", "push_next")
    for flag, name, table in zip(flags, names, (_POP_PREV, _POP_NEXT, _PUSH_PREV, _PUSH_NEXT)):
        bad = flag & (np.asarray(table)[unit] < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DependencyError(
                f"instruction at address {base_address + i}: {UNIT_NAMES[unit[i]]} has no "
                f"{'previous' if 'prev' in name else 'next'} neighbour, but its {name} flag is set.")
