"""Cycle-level performance model: times a routine of a compiled program on its HardwareConfig.

Each instruction's latency comes from its opcode's formula (sim/op_timing.py); the three units
run them in program order, synchronised by the program's dependency tokens (sim/cycle_queues.py),
so HBM transfers overlap compute exactly as far as the program allows. Costs that do not depend
on the runtime registers are computed once per program and reused for every call, which keeps a
context or prompt-length sweep fast.

`RoutineTimer(instructions, config).time(entry, regs)` -> `RoutineTiming`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.compiler.isa import Buffer, Instruction, Opcode, Registers, Unit
from llmfab.errors import InputError

from . import cycle_queues, op_timing
from .hbm_timing import DEFAULT_HBM_TIMING, HbmTiming
from .op_timing import OpCost

class CycleModelError(InputError):
    """A program cannot be timed (no END, bad entry address)."""


_UNIT_INDEX = {Unit.LOAD: cycle_queues.LOAD, Unit.COMPUTE: cycle_queues.COMPUTE, Unit.STORE: cycle_queues.STORE}
# What a LOAD brings in, by destination buffer (for the HBM-bytes breakdown).
_LOAD_KIND = {Buffer.WGT: "weights", Buffer.KV: "kv_cache", Buffer.ACT: "activations", Buffer.OUT: "outputs"}


@dataclass(frozen=True)
class RoutineTiming:
    """The timed run of one routine: totals, breakdowns and the per-instruction schedule."""

    cycles: float
    clock_hz: float
    hbm_read_bytes: float
    hbm_write_bytes: float
    hbm_bytes_by_kind: dict[str, float]
    macs_by_mode: dict[Mode, float]
    busy_by_mode: dict[Mode, float]
    busy_by_unit: dict[str, float]
    cycles_by_opcode: dict[str, float]
    count_by_opcode: dict[str, int]
    segment_cycles: dict[str, float]
    overflows: tuple[str, ...]
    schedule: cycle_queues.Schedule = field(repr=False)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_read_bytes + self.hbm_write_bytes


class RoutineTimer:
    """Times routines of one instruction stream on one hardware config, caching fixed costs."""

    def __init__(self, instructions: Sequence[Instruction], config: HardwareConfig, num_layers: int | None = None,
                 hbm: HbmTiming = DEFAULT_HBM_TIMING, datapath: op_timing.Datapath = op_timing.DEFAULT_DATAPATH):
        self.instructions = list(instructions)
        self.config = config
        self.hbm = hbm
        self.datapath = datapath
        self.num_layers = num_layers
        self._static: dict[int, OpCost] = {}
        self._routines: dict[int, np.ndarray] = {}

    def routine(self, entry: int) -> np.ndarray:
        """Addresses of the routine starting at `entry`, up to and including its END."""
        if entry not in self._routines:
            addresses = []
            for address in range(entry, len(self.instructions)):
                addresses.append(address)
                if self.instructions[address].opcode is Opcode.END:
                    break
            else:
                raise CycleModelError(f"cycle model: the routine at address {entry} has no END instruction; "
                                      "the program is incomplete or corrupt")
            self._routines[entry] = np.asarray(addresses)
        return self._routines[entry]

    def cost(self, address: int, regs: Registers) -> OpCost:
        inst = self.instructions[address]
        if op_timing.depends_on_registers(inst):
            return op_timing.op_cost(inst, regs, self.config, self.hbm, self.datapath)
        cached = self._static.get(address)
        if cached is None:
            cached = self._static[address] = op_timing.op_cost(inst, regs, self.config, self.hbm, self.datapath)
        return cached

    def time(self, entry: int, regs: Registers) -> RoutineTiming:
        """Run the routine at `entry` with runtime registers `regs`."""
        addresses = self.routine(entry)
        insts = [self.instructions[a] for a in addresses]
        costs = [self.cost(int(a), regs) for a in addresses]
        units = [_UNIT_INDEX[i.unit] for i in insts]
        sched = cycle_queues.schedule(
            units, [c.cycles for c in costs], [i.pop_prev for i in insts], [i.pop_next for i in insts],
            [i.push_prev for i in insts], [i.push_next for i in insts], base_address=entry,
            latency=[c.latency for c in costs], channels=[c.channels for c in costs])
        return self._summarise(insts, costs, sched, addresses)

    def _summarise(self, insts, costs, sched, addresses) -> RoutineTiming:
        by_kind: dict[str, float] = defaultdict(float)
        macs: dict[Mode, float] = defaultdict(float)
        busy_mode: dict[Mode, float] = defaultdict(float)
        cyc_op: dict[str, float] = defaultdict(float)
        cnt_op: dict[str, int] = defaultdict(int)
        overflows = []
        for address, inst, cost in zip(addresses, insts, costs):
            name = Opcode(inst.opcode).name
            cyc_op[name] += cost.cycles
            cnt_op[name] += 1
            if cost.hbm_read_bytes:
                by_kind[_LOAD_KIND.get(Buffer(inst.buf), "other")] += cost.hbm_read_bytes
            if cost.hbm_write_bytes:
                by_kind["kv_cache_writes" if Buffer(inst.buf) is Buffer.KV else "stores"] += cost.hbm_write_bytes
            if cost.mode is not None:
                macs[cost.mode] += cost.macs
                busy_mode[cost.mode] += cost.cycles
            if cost.sfu_elements:
                macs[Mode.SPECIAL] += cost.sfu_elements
            if cost.buffer_overflow_bytes:
                overflows.append(f"instruction {int(address)} ({name}) reaches {cost.buffer_overflow_bytes:,.0f} "
                                 f"bytes past the end of buffer {Buffer(inst.buf).name}")
        return RoutineTiming(
            cycles=sched.total_cycles, clock_hz=self.config.clock_hz,
            hbm_read_bytes=sum(c.hbm_read_bytes for c in costs),
            hbm_write_bytes=sum(c.hbm_write_bytes for c in costs),
            hbm_bytes_by_kind=dict(by_kind), macs_by_mode=dict(macs), busy_by_mode=dict(busy_mode),
            busy_by_unit={name: sched.busy_cycles(u) for u, name in enumerate(cycle_queues.UNIT_NAMES)},
            cycles_by_opcode=dict(cyc_op), count_by_opcode=dict(cnt_op),
            segment_cycles=self._segments(insts, sched), overflows=tuple(overflows), schedule=sched)

    def _segments(self, insts, sched) -> dict[str, float]:
        """Time per model part: embedding, each decoder layer, head (final norm + LM head).

        A LLaMA layer starts with its input RMSNORM and has two, so RMSNORM number 2k opens layer
        k and number 2L opens the head. A part's time runs from the end of the previous part's
        last COMPUTE instruction to the end of its own: the engine's progress through the model.
        """
        if not self.num_layers:
            return {}
        boundaries = []  # index into insts where each part starts
        norms = 0
        for index, inst in enumerate(insts):
            if inst.opcode is Opcode.RMSNORM:
                if norms % 2 == 0:
                    boundaries.append(index)
                norms += 1
        if len(boundaries) != self.num_layers + 1:
            return {}  # not a whole-model routine (hand-built or partial); no per-layer split
        names = ["embedding"] + [f"layer {k}" for k in range(self.num_layers)] + ["head"]
        starts = [0] + boundaries
        ends = boundaries + [len(insts)]
        compute_end = np.where(sched.unit == cycle_queues.COMPUTE, sched.end, 0.0)
        out, previous = {}, 0.0
        for name, lo, hi in zip(names, starts, ends):
            done = float(compute_end[lo:hi].max()) if hi > lo else previous
            out[name] = max(done - previous, 0.0)
            previous = max(previous, done)
        return out
