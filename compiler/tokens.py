"""Dependency tokens from buffer hazards (docs/isa.md, "Dependency tokens").

The scheduler emits instructions in a valid sequential order, each with the buffer byte ranges it
reads and writes. Here every wait between units is found (read after write, write after read,
write after write, against the latest conflicting instruction of each other unit) and turned
into POP/PUSH bits: the producer pushes, the waiter pops — unless an earlier pop of the waiter's
in-order unit already waited for the producer or a later instruction of its unit. LOAD <-> STORE
waits go through a COMPUTE instruction between them: the latest one the waiting instruction or an
earlier one of its unit already waits for, else the first after the producer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmfab.compiler.isa import Instruction, Opcode, Unit

Access = tuple[int, int, int]  # (buffer id, first byte, end byte)

NEIGHBOURS = {(Unit.LOAD, Unit.COMPUTE), (Unit.COMPUTE, Unit.LOAD), (Unit.COMPUTE, Unit.STORE),
              (Unit.STORE, Unit.COMPUTE)}


class SchedulingError(RuntimeError):
    """The scheduler produced an order its tokens cannot express (a bug, not a user error)."""


@dataclass
class Step:
    """An instruction with the buffer bytes it reads and writes (upper bounds for register-sized rows)."""

    inst: Instruction
    reads: list[Access] = field(default_factory=list)
    writes: list[Access] = field(default_factory=list)


def _overlap(a: list[Access], b: list[Access]) -> bool:
    return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)


def _conflicts(earlier: Step, later: Step) -> bool:
    return (_overlap(earlier.writes, later.reads) or _overlap(earlier.reads, later.writes)
            or _overlap(earlier.writes, later.writes))


def hazards(steps: list[Step]) -> list[tuple[int, int]]:
    """(producer, consumer) index pairs on different units: for each consumer and other unit, the
    latest earlier instruction of that unit it conflicts with. END waits for the last STORE."""
    touching: dict[tuple[Unit, int], list[int]] = {}  # (unit, buffer) -> instructions touching it
    last_of: dict[Unit, int] = {}
    edges = []
    for index, step in enumerate(steps):
        unit = step.inst.unit
        buffers = {a[0] for a in step.reads + step.writes}
        for other in Unit:
            if other is unit:
                continue
            latest = -1
            for buf in buffers:
                for j in reversed(touching.get((other, buf), ())):
                    if j <= latest:
                        break
                    if _conflicts(steps[j], step):
                        latest = j
                        break
            if step.inst.opcode is Opcode.END and other is Unit.STORE:
                latest = max(latest, last_of.get(Unit.STORE, -1))
            if latest >= 0:
                edges.append((latest, index))
        for buf in buffers:
            touching.setdefault((unit, buf), []).append(index)
        last_of[unit] = index
    return edges


def _compute_waits(edges: list[tuple[int, int]], units: list[Unit]) -> list[int]:
    """Per instruction of LOAD or STORE: the latest COMPUTE instruction that it or an earlier
    instruction of its unit waits for directly (-1 if none). A LOAD <-> STORE wait is relayed through
    that COMPUTE instruction when it comes after the producer: the waiting unit is held up by it
    anyway, and the COMPUTE unit is not made to wait for the transfer any earlier than that (a STORE
    of a KV section relays its wait for the section's LOAD through the KV_QUANT it stores, which
    waits for that LOAD anyway, instead of holding up the next layer's first RMSNORM)."""
    direct = [-1] * len(units)
    for producer, consumer in edges:
        if units[producer] is Unit.COMPUTE and units[consumer] is not Unit.COMPUTE:
            direct[consumer] = max(direct[consumer], producer)
    waited, latest = [-1] * len(units), {Unit.LOAD: -1, Unit.STORE: -1}
    for index, unit in enumerate(units):
        if unit in latest:
            latest[unit] = max(latest[unit], direct[index])
            waited[index] = latest[unit]
    return waited


def assign_tokens(steps: list[Step]) -> list[Instruction]:
    """The instructions of ``steps`` with POP/PUSH bits that enforce every hazard.

    For each waiting instruction q and producing unit v, the producer p is the latest conflicting
    instruction of v. Consumers are taken in program order; if p is no later than the producer of
    the previous token from v to q's unit, q's in-order unit already waited for it; otherwise p
    pushes and q pops. Pushes then come in v's order and pops in q's unit's order, so the k-th pop
    takes the k-th push, as the queues are FIFO.
    """
    units = [s.inst.unit for s in steps]
    needs: dict[tuple[int, Unit], int] = {}

    def need(producer: int, consumer: int) -> None:
        key = (consumer, units[producer])
        needs[key] = max(needs.get(key, -1), producer)

    edges = hazards(steps)
    waited = _compute_waits(edges, units)
    for producer, consumer in edges:
        if (units[producer], units[consumer]) in NEIGHBOURS:
            need(producer, consumer)
            continue
        relay = waited[consumer] if waited[consumer] > producer else next(
            (c for c in range(producer + 1, consumer) if units[c] is Unit.COMPUTE), None)
        if relay is None:
            raise SchedulingError(f"instruction {consumer} ({steps[consumer].inst.opcode.name}) waits for "
                                  f"{producer} ({steps[producer].inst.opcode.name}) with no COMPUTE instruction "
                                  "between them to relay the token")
        need(producer, relay)
        need(relay, consumer)
    flags = [dict(pop_prev=0, pop_next=0, push_prev=0, push_next=0) for _ in steps]
    order = [Unit.LOAD, Unit.COMPUTE, Unit.STORE]
    last_push: dict[tuple[Unit, Unit], int] = {}
    for (consumer, unit), producer in sorted(needs.items(), key=lambda item: item[0][0]):
        direction = (unit, units[consumer])
        if producer <= last_push.get(direction, -1):
            continue  # the consumer's in-order unit already waited for a later instruction of `unit`
        toward_next = order.index(units[consumer]) > order.index(unit)
        flags[producer]["push_next" if toward_next else "push_prev"] = 1
        flags[consumer]["pop_prev" if toward_next else "pop_next"] = 1
        last_push[direction] = producer
    return [s.inst.replace(**f) for s, f in zip(steps, flags)]
