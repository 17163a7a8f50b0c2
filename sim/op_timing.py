"""Cycle formula of every opcode of the ISA (compiler/isa.py), one function per opcode.

Each function takes the decoded instruction, the runtime registers and the HardwareConfig and
returns an `OpCost`: the cycles the instruction occupies its unit, the HBM bytes it moves, the
multiply-accumulates (or special-function elements) it performs and the datapath it uses.
docs/isa.md points here; docs/performance.md lists the formulas with their constants, so the RTL
can be checked against them instruction by instruction.

Conventions: `T` n_tokens, `P` position, `S`/`W` Λ sinks/window, `L_mode` the lanes of a mode
(`HardwareConfig.macs_per_cycle`), `U` SFU lanes, `R x C` the prefill array.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

from llmfab.boards.hardware import HardwareConfig, Mode
from llmfab.compiler.isa import Buffer, Flag, GemmMode, Instruction, Opcode, Registers, row_range, transfer_runs

from . import hbm_timing, rtl_timing
from .hbm_timing import DEFAULT_HBM_TIMING, HbmTiming

# Pipeline fill/drain of one COMPUTE instruction (operand fetch, adder tree, write-back).
COMPUTE_PIPELINE_CYCLES = 16
# Serial per-row work of a normalisation: reciprocal / rsqrt of the row statistic (docs/numerics.md §6).
ROW_RECIPROCAL_CYCLES = 8
# A decode lane multiplies one 2-bit weight digit per cycle (shift-and-add, docs/numerics.md §4.1);
# wider weights take ceil(bits / 2) cycles (bit-serial digits).
DECODE_LANE_DIGIT_BITS = 2

TIMING_SOURCES = {
    "COMPUTE_PIPELINE_CYCLES": "estimate: operand fetch (2), multiply (3), adder tree log2(4096) (12) rounded",
    "ROW_RECIPROCAL_CYCLES": "estimate: normalise + table + one Newton step of the reciprocal/rsqrt (§6.1-6.2)",
    "DECODE_LANE_DIGIT_BITS": "design: the decode lanes are int8 x int2 shift-add units (docs/hardware.md)",
}


class Datapath(enum.Enum):
    """Which engine the formulas time: the RTL as built, or the target design.

    - `RTL`: the engine as built, each opcode's Amaranth sequencer formula (sim/rtl_timing.py),
      which the RTL's cocotb tests assert cycle for cycle;
    - `TARGET`: the datapath the design aims at (the formulas of this module): GEMV lanes that
      take one 2-bit digit per cycle, a prefill array, attention lanes shared by every head and
      key with the softmax overlapped, a fixed 16-cycle fill per instruction. The RTL does not
      have it yet (docs/performance.md, "Target and built datapath").

    MEMORY instructions take the HBM timing (hbm_timing) under both; under `RTL` no less than the
    RTL's LOAD/STORE units need (rtl/engine/memory_unit.transfer_cycles, one instruction at a time,
    so a request's latency is not hidden behind the previous transfer).
    """

    RTL = "rtl"
    TARGET = "target"


DEFAULT_DATAPATH = Datapath.RTL


@dataclass(frozen=True)
class OpCost:
    """What one instruction costs: unit cycles, HBM traffic, work and the datapath doing it."""

    cycles: float
    hbm_read_bytes: float = 0.0
    hbm_write_bytes: float = 0.0
    macs: float = 0.0  # multiply-accumulates (elements for Mode.SPECIAL)
    mode: Mode | None = None
    sfu_elements: float = 0.0  # special-function elements done alongside (attention softmax)
    latency: float = 0.0  # part of `cycles` the unit can overlap with its previous transfer (request latency)
    channels: tuple[int, int] | None = None  # (first, count) of the HBM pseudo-channels a transfer occupies
    buffer_overflow_bytes: float = 0.0  # bytes beyond the buffer's capacity (a program/config mismatch)


def _buffer_size(config: HardwareConfig, buf: int) -> int:
    e = config.engine
    return {Buffer.WGT: e.weight_buffer_bytes, Buffer.ACT: e.activation_buffer_bytes,
            Buffer.KV: e.kv_buffer_bytes, Buffer.OUT: e.output_buffer_bytes}.get(Buffer(buf), 0)


def _rows_per_port(runs, lanes: int) -> int:
    """Rows on the most loaded of ``lanes`` round-robin ports for runs ``(first row, rows)``."""
    if len(runs) == 1:
        return math.ceil(runs[0][1] / min(lanes, runs[0][1]))
    load = [0] * lanes
    for first, n in runs:
        whole, extra = divmod(n, lanes)
        for lane in range(lanes):
            load[lane] += whole + ((lane - first) % lanes < extra)
    return max(load)


def _transfer(inst: Instruction, regs: Registers, config: HardwareConfig, gather: bool, hbm: HbmTiming) -> OpCost:
    """A MEMORY instruction's cycles (request latency included, which the queues may overlap),
    bytes, pseudo-channels and bytes past the buffer end. A RING transfer that wraps its ring
    moves two runs of rows (compiler.isa.transfer_runs); each run starts its own bursts."""
    runs = transfer_runs(inst, regs)
    count = sum(n for _, n in runs)
    nbytes = count * inst.row_bytes
    if nbytes == 0:
        return OpCost(0.0)
    striped = bool(inst.flags & Flag.STRIPED) and inst.sub > 1
    lanes = min(inst.sub if striped else 1, config.engine.hbm_ports)
    ports = min(lanes, count)
    rows_per_port = _rows_per_port(runs, lanes)
    per_port = rows_per_port * inst.row_bytes
    burst = hbm_timing.burst_bytes(config)
    contiguous = inst.hbm_stride == inst.row_bytes and not gather
    if contiguous:
        bursts = sum(math.ceil(math.ceil(n / min(lanes, n)) * inst.row_bytes / burst) for _, n in runs)
    else:
        bursts = rows_per_port * math.ceil(inst.row_bytes / burst)
    cycles = hbm_timing.port_transfer_cycles(config, per_port, bursts, hbm)
    start = runs[0][0]
    if inst.flags & Flag.BUF_AT_START:
        used = inst.buf_addr + max(s + n - 1 for s, n in runs) * inst.buf_stride + inst.row_bytes
    else:
        used = inst.buf_addr + (count - 1) * inst.buf_stride + inst.row_bytes
    if striped and len(runs) == 1:  # rows start at pc + (first row mod sub); over `ports` channels that may wrap
        pc0 = inst.pc + start % inst.sub if ports < inst.sub else inst.pc
        channels = (pc0, ports) if pc0 + ports <= inst.pc + inst.sub else (inst.pc, inst.sub)
    elif striped:
        channels = (inst.pc, inst.sub)
    else:
        channels = (inst.pc, 1)
    return OpCost(cycles, hbm_read_bytes=float(nbytes), latency=hbm_timing.latency_cycles(config, hbm),
                  channels=channels, buffer_overflow_bytes=float(max(0, used - _buffer_size(config, inst.buf))))


def load_cost(inst: Instruction, regs: Registers, config: HardwareConfig,
              hbm: HbmTiming = DEFAULT_HBM_TIMING) -> OpCost:
    """LOAD: rows of `row_bytes` over 1 port, or over `sub` ports when STRIPED (see hbm_timing)."""
    return _transfer(inst, regs, config, False, hbm)


def load_rows_cost(inst: Instruction, regs: Registers, config: HardwareConfig,
                   hbm: HbmTiming = DEFAULT_HBM_TIMING) -> OpCost:
    """LOAD_ROWS: a gather, so every row starts its own bursts."""
    return _transfer(inst, regs, config, True, hbm)


def store_cost(inst: Instruction, regs: Registers, config: HardwareConfig,
               hbm: HbmTiming = DEFAULT_HBM_TIMING) -> OpCost:
    """STORE: as LOAD, writing (the buffer is only read, so no overflow is reported)."""
    cost = _transfer(inst, regs, config, False, hbm)
    return dataclasses.replace(cost, hbm_read_bytes=0.0, hbm_write_bytes=cost.hbm_read_bytes,
                               buffer_overflow_bytes=0.0)


def gemm_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """GEMM over T rows, N = cols outputs and K = depth inputs (K/2 kept under 2:4).

    GEMV modes (decode lanes, L = decode_lanes): `T * ceil(N * K_kept * digits / L)` with
    `digits = ceil(bits / 2)`. GEMM modes (R x C DSP array, tokens on rows, outputs on columns,
    output-stationary, one kept weight per PE per cycle): `ceil(T/R) * ceil(N/C) * K_kept + R + C`.
    Both add the pipeline fill. With flag A16 (the LM head's int16 codes) the GEMV lanes take two
    passes, one per code byte (docs/numerics.md §4.3); a PE of the DSP array takes the 16-bit code
    on its 18-bit port in one.
    """
    _, tokens = row_range(inst, regs)
    mode = GemmMode(inst.mode)
    kept = inst.depth // 2 if mode.sparse else inst.depth
    macs = tokens * inst.cols * kept
    if mode in (GemmMode.GEMV, GemmMode.GEMV_SPARSE):
        digits = math.ceil(max(inst.sub, 1) / DECODE_LANE_DIGIT_BITS)
        passes = 2 if inst.flags & Flag.A16 else 1
        cycles = tokens * math.ceil(passes * inst.cols * kept * digits / config.engine.decode_lanes)
        datapath = Mode.DECODE
    else:
        e = config.engine
        cycles = math.ceil(tokens / e.prefill_rows) * math.ceil(inst.cols / e.prefill_cols) * kept
        cycles += e.prefill_rows + e.prefill_cols
        datapath = Mode.PREFILL
    return OpCost(cycles + COMPUTE_PIPELINE_CYCLES, macs=macs, mode=datapath)


def _elementwise(elements: float, passes: int, config: HardwareConfig, extra: float = 0.0) -> OpCost:
    lanes = config.engine.sfu_lanes
    return OpCost(passes * math.ceil(elements / lanes) + extra + COMPUTE_PIPELINE_CYCLES,
                  macs=passes * elements, mode=Mode.SPECIAL)


def requant_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """REQUANT: two passes over T x cols (row maximum, then codes) plus a reciprocal per row."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 2, config, rows * ROW_RECIPROCAL_CYCLES)


def rmsnorm_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """RMSNORM: sum of squares, then scaling (two passes), plus an rsqrt per row."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 2, config, rows * ROW_RECIPROCAL_CYCLES)


def rope_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """ROPE: one pass over T x cols elements (each lane produces one rotated element)."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 1, config)


def kv_quant_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """KV_QUANT: two passes over T x cols (group min/max, then codes); ACT32 streams one copy pass."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 2 if inst.mode else 1, config)


def visible_keys(regs: Registers, lambda_shaped: bool) -> int:
    """Key visits of a run's T queries: sum over queries t of the keys query P + t attends to."""
    t, p = regs.n_tokens, regs.position
    total = t * p + t * (t + 1) // 2  # causal: query P + t sees P + t + 1 keys
    if not lambda_shaped or not regs.window:
        return total
    cap = regs.sinks + regs.window
    # Queries whose causal count exceeds S + W see exactly S + W keys.
    first_capped = max(cap - p, 0)  # smallest t (1-based count) with P + t > cap
    if first_capped >= t:
        return total
    uncapped = first_capped * p + first_capped * (first_capped + 1) // 2
    return uncapped + (t - first_capped) * cap


def attention_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """ATTENTION over V key visits (`visible_keys`), H query heads of D (cols = H*D), KV heads (sub).

    Attention lanes do Q.K and P.V: `2 * V * H * D` MACs; under Λ the keys are cached before RoPE
    (sim/kv_ring.py) and rotated by their slot on the fly: `2 * V * KV * D` more multiplies. The
    SFU quantizes the queries (2 passes over T*H*D) and runs the softmax (exp and normalise, 2
    passes over V*H) in a pipeline with the lanes, so the instruction takes the longer of the two.
    """
    lam = bool(inst.flags & Flag.LAMBDA)
    visits = visible_keys(regs, lam)
    heads = inst.cols // max(inst.depth, 1)
    kv_heads = max(inst.sub, 1)
    macs = 2 * visits * inst.cols + (2 * visits * kv_heads * inst.depth if lam else 0)
    sfu = 2 * regs.n_tokens * inst.cols + 2 * visits * heads
    lane_cycles = math.ceil(macs / config.engine.attention_lanes)
    sfu_cycles = math.ceil(sfu / config.engine.sfu_lanes) + regs.n_tokens * heads * ROW_RECIPROCAL_CYCLES
    return OpCost(max(lane_cycles, sfu_cycles) + COMPUTE_PIPELINE_CYCLES, macs=macs, mode=Mode.ATTENTION,
                  sfu_elements=sfu)


def silu_mul_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """SILU_MUL: one pipelined pass (exp2, reciprocal, two products) over T x cols."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 1, config)


def add_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """ADD: one pass over T x cols."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 1, config)


def embed_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """EMBED: one dequantizing pass over T x cols."""
    _, rows = row_range(inst, regs)
    return _elementwise(rows * inst.cols, 1, config)


def end_cost(inst: Instruction, regs: Registers, config: HardwareConfig) -> OpCost:
    """END: no work; the routine ends when every unit has drained."""
    return OpCost(0.0)


OPCODE_TIMING = {
    Opcode.LOAD: load_cost,
    Opcode.LOAD_ROWS: load_rows_cost,
    Opcode.STORE: store_cost,
    Opcode.GEMM: gemm_cost,
    Opcode.REQUANT: requant_cost,
    Opcode.RMSNORM: rmsnorm_cost,
    Opcode.ROPE: rope_cost,
    Opcode.KV_QUANT: kv_quant_cost,
    Opcode.ATTENTION: attention_cost,
    Opcode.SILU_MUL: silu_mul_cost,
    Opcode.ADD: add_cost,
    Opcode.EMBED: embed_cost,
    Opcode.END: end_cost,
}


MEMORY_TIMING = {Opcode.LOAD, Opcode.LOAD_ROWS, Opcode.STORE}


def op_cost(inst: Instruction, regs: Registers, config: HardwareConfig,
            hbm: HbmTiming = DEFAULT_HBM_TIMING, datapath: Datapath = DEFAULT_DATAPATH) -> OpCost:
    """The cost of any instruction (dispatch on its opcode); under `Datapath.RTL` a COMPUTE
    instruction takes the RTL sequencer's cycles, with this module's work and datapath figures."""
    opcode = Opcode(inst.opcode)
    if opcode in MEMORY_TIMING:
        cost = OPCODE_TIMING[opcode](inst, regs, config, hbm)
        if datapath is Datapath.RTL:  # the slower of the memory and the RTL's DMA; one instruction at a time
            rtl = rtl_timing.memory_cycles(inst, regs, config, hbm_timing.latency_cycles(config, hbm))
            return dataclasses.replace(cost, cycles=float(max(cost.cycles, rtl)), latency=0.0)
        return cost
    cost = OPCODE_TIMING[opcode](inst, regs, config)
    if datapath is Datapath.RTL and opcode is not Opcode.END:
        return dataclasses.replace(cost, cycles=float(rtl_timing.compute_cycles(inst, regs, config)))
    return cost


def depends_on_registers(inst: Instruction) -> bool:
    """True if the cost changes with n_tokens/position (row sources, start rows, attention)."""
    return bool(inst.rows_src) or bool(inst.start_src) or Opcode(inst.opcode) is Opcode.ATTENTION
