"""The instruction-level emulator: the golden model of the engine (docs/isa.md).

It executes a program (llmfab.compiler.program) instruction by instruction on byte-addressed
models of the four on-chip buffers (sizes from the program's HardwareConfig; an access outside a
buffer is an error) and of the HBM pseudo-channels (initialised from the program's images). Each
COMPUTE opcode is one vectorized integer op of llmfab.sim.numerics (sim/emulator_ops.py), so the
logits equal those of llmfab.sim.integer_model.IntegerModel bit for bit.

Instructions run in program order; the dependency tokens are checked as they go: a POP from an
empty queue means the three units would deadlock (an error naming the instruction), and tokens
left at END are an error too. Decoded weight tiles are cached by their HBM address (weights are
read-only), which makes decode fast enough for real models.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from llmfab.compiler.isa import (
    Buffer,
    Flag,
    GemmMode,
    Instruction,
    IsaError,
    Opcode,
    Registers,
    Unit,
    decode_program,
    hbm_row,
    row_range,
    transfer_runs,
)
from llmfab.compiler.kv_layout import KvStreamLayout
from llmfab.compiler.memory_plan import A8_HEADER_BYTES
from llmfab.compiler.program import Program, ProgramError
from llmfab.compiler.weight_tiles import TileShape, unpack_tile
from llmfab.sim.emulator_gemm import PreparedTile
from llmfab.sim.emulator_ops import HANDLERS
from llmfab.sim.fixed_point import ACT32
from llmfab.sim.linear_ops import ActCodes

_BUF_AT_START, _STRIPED, _HALF_ZERO = int(Flag.BUF_AT_START), int(Flag.STRIPED), int(Flag.HALF_ZERO)
_WGT, _OUT = int(Buffer.WGT), int(Buffer.OUT)
_MEMORY = (Opcode.LOAD, Opcode.STORE, Opcode.LOAD_ROWS)

QUEUES = {  # (unit, bit) -> queue name
    (Unit.COMPUTE, "pop_prev"): "load->compute", (Unit.LOAD, "push_next"): "load->compute",
    (Unit.LOAD, "pop_next"): "compute->load", (Unit.COMPUTE, "push_prev"): "compute->load",
    (Unit.STORE, "pop_prev"): "compute->store", (Unit.COMPUTE, "push_next"): "compute->store",
    (Unit.COMPUTE, "pop_next"): "store->compute", (Unit.STORE, "push_prev"): "store->compute",
}


class EmulatorError(ProgramError):
    """The program did something the engine cannot (buffer overflow, deadlock, bad operand)."""


@dataclass
class RunStats:
    """What one run executed: instructions and bytes per opcode (HBM bytes for LOAD/STORE, buffer
    bytes read for COMPUTE), and the wall time."""

    routine: str
    n_tokens: int
    position: int
    instructions: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total_instructions(self) -> int:
        return sum(self.instructions.values())

    def to_dict(self) -> dict:
        return {"routine": self.routine, "n_tokens": self.n_tokens, "position": self.position,
                "instructions": dict(self.instructions), "bytes": dict(self.bytes), "seconds": self.seconds}


class Emulator:
    """Runs a loaded program's routines on modelled buffers and HBM."""

    def __init__(self, program: Program):
        if program.shape_only:
            raise ProgramError(f"{program.folder} was compiled with --shape-only and has no weights; compile the "
                               "artifact without --shape-only to run it")
        self.program = program
        self.manifest = program.manifest
        self.instructions = decode_program(program.instructions_bytes())
        engine = program.hardware.engine
        sizes = {Buffer.WGT: engine.weight_buffer_bytes, Buffer.ACT: engine.activation_buffer_bytes,
                 Buffer.KV: engine.kv_buffer_bytes, Buffer.OUT: engine.output_buffer_bytes}
        self._init_buffers(sizes)
        self.images = [entry for entry in self.manifest["hbm"]["pcs"]]
        if [entry["pc"] for entry in self.images] != list(range(len(self.images))):
            raise ProgramError(f"{program.folder}: the manifest's HBM pseudo-channels are not numbered 0, 1, ...; "
                               "the manifest is damaged, compile the program again")
        # One array [pseudo-channel, byte] so a transfer striped over several pseudo-channels is one
        # numpy copy; self.hbm[pc] is pseudo-channel pc's used bytes (bounds checks use its size).
        self.used = np.array([entry["used_bytes"] for entry in self.images], dtype=np.int64)
        self.image_bytes = np.array([entry["image_bytes"] for entry in self.images], dtype=np.int64)
        self.hbm_lanes = np.zeros((len(self.images), int(self.used.max(initial=0))), dtype=np.uint8)
        self.hbm: list[np.ndarray] = [self.hbm_lanes[pc, :n] for pc, n in enumerate(self.used)]
        for entry, memory in zip(self.images, self.hbm):
            path = program.image_path(entry["pc"])
            if path is not None:
                data = np.fromfile(path, dtype=np.uint8)
                memory[:data.size] = data
        self.tokens = [self._token_plan(inst) for inst in self.instructions]
        lim = self.manifest["limits"]
        self.registers = Registers(0, 0, lim.get("sinks") or 0, lim.get("window") or 0, lim["max_prefill_tokens"])
        self.position = 0
        self.current = 0

    def _init_buffers(self, sizes: dict) -> None:
        """The on-chip buffers (buffer id -> bytes) and the caches the handlers keep about them:
        all the state the COMPUTE handlers (sim/emulator_ops.py) use besides the instruction."""
        self.buffers = {b: np.zeros(n, dtype=np.uint8) for b, n in sizes.items()}
        self.transfer_plans: dict[int, tuple] = {}
        self.gemm_shapes: dict[tuple, tuple[TileShape, int]] = {}
        self.lambda_views: dict[tuple, object] = {}  # sim/emulator_lambda.py: region views by (address, layout)
        self.tile_cache: dict[tuple, PreparedTile] = {}
        self.wgt_tags: dict[int, tuple] = {}

    # ------------------------------------------------------------- host interface

    def reset(self) -> None:
        """Start a new sequence: the runtime regions (KV cache, input, logits) are cleared."""
        for entry, memory in zip(self.images, self.hbm):
            memory[entry["image_bytes"]:] = 0
        for buffer in self.buffers.values():
            buffer[:] = 0
        self.wgt_tags.clear()
        self.position = 0

    def write_tokens(self, token_ids) -> None:
        """Token ids (at most C of them) -> the input region (int32)."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        limits = self.program.limits
        if ids.size > limits.max_prefill_tokens:
            raise ProgramError(f"{ids.size} token ids: the program's input region holds at most "
                               f"{limits.max_prefill_tokens} (its prefill chunk); write them chunk by chunk")
        if ids.size and (ids.min() < 0 or ids.max() >= limits.vocab_size):
            raise ProgramError(f"token ids must lie in 0..{limits.vocab_size - 1}; got {ids.min()}..{ids.max()}")
        region = self.manifest["io"]["input_ids"]
        self.hbm[region["pc"]][region["offset"]:region["offset"] + 4 * ids.size] = ids.astype(np.int32).view(np.uint8)

    def start(self, routine: str, n_tokens: int, position: int) -> RunStats:
        """Set the runtime registers and run ``routine`` from its entry to END."""
        self.program.limits.check_run(routine, n_tokens, position)
        if position != self.position:
            raise ProgramError(f"{routine} at position {position}, but {self.position} tokens are in the cache since "
                               "the last reset; runs must continue the sequence (or call reset())")
        entry = self.manifest["routines"][routine]
        self.registers = dataclasses.replace(self.registers, n_tokens=n_tokens, position=position)
        stats = RunStats(routine, n_tokens, position)
        began = time.perf_counter()
        queues = dict.fromkeys(set(QUEUES.values()), 0)
        counts, moved = Counter(), Counter()
        for address in range(entry["entry"], entry["entry"] + entry["count"]):
            inst = self.instructions[address]
            pops, pushes = self.tokens[address]
            self.current = address
            for name in pops:
                if not queues[name]:
                    self.fail(inst, f"pops the {name} token queue, which is empty in program order: the units "
                                    "would deadlock")
                queues[name] -= 1
            if inst.opcode is Opcode.END:
                left = {k: v for k, v in queues.items() if v}
                if left:
                    self.fail(inst, f"END with tokens left in {left}; every push must be popped")
                counts[inst.opcode] += 1
                break
            moved[inst.opcode] += self.execute(inst)
            counts[inst.opcode] += 1
            for name in pushes:
                queues[name] += 1
        else:
            raise EmulatorError(f"routine {routine} ran past its last instruction without END")
        self.position = position + n_tokens
        stats.instructions.update({op.name: n for op, n in counts.items()})
        stats.bytes.update({op.name: n for op, n in moved.items()})
        stats.seconds = time.perf_counter() - began
        return stats

    def read_logits(self, n_tokens: int) -> np.ndarray:
        """int64 ACT32 logits ``[n_tokens, vocab]`` of the last run."""
        region = self.manifest["io"]["logits"]
        vocab = self.program.limits.vocab_size
        if not 1 <= n_tokens <= region["rows"]:
            raise ProgramError(f"read_logits({n_tokens}): the output region holds 1..{region['rows']} rows")
        out = np.empty((n_tokens, vocab), dtype=np.int64)
        for row in range(n_tokens):
            pc = region["pc"] + row % region["ports"]
            offset = region["offset"] + (row // region["ports"]) * region["stride"]
            out[row] = self.hbm[pc][offset:offset + 4 * vocab].view(np.int32)
        return out

    # ------------------------------------------------------------- execution

    @staticmethod
    def _token_plan(inst: Instruction) -> tuple[tuple[str, ...], tuple[str, ...]]:
        unit = inst.unit
        pops = tuple(QUEUES[(unit, b)] for b in ("pop_prev", "pop_next") if getattr(inst, b))
        pushes = tuple(QUEUES[(unit, b)] for b in ("push_prev", "push_next") if getattr(inst, b))
        return pops, pushes

    def fail(self, inst: Instruction, message: str):
        raise EmulatorError(f"instruction {self.current} ({inst.opcode.name}): {message}")

    def execute(self, inst: Instruction) -> int:
        if inst.opcode in _MEMORY:
            return self.transfer(inst)
        handler = HANDLERS.get(inst.opcode)
        if handler is None:
            self.fail(inst, "has no emulator semantics")
        _, rows = row_range(inst, self.registers)
        try:
            return handler(self, inst, rows, self.registers.position)
        except (IndexError, ValueError, OverflowError) as err:
            self.fail(inst, str(err))

    def buffer(self, buf: int) -> np.ndarray:
        memory = self.buffers.get(buf)
        if memory is None:
            raise EmulatorError(f"instruction {self.current}: buffer id {buf} does not exist")
        return memory

    def _check(self, buf: int, start: int, end: int) -> np.ndarray:
        memory = self.buffer(buf)
        if start < 0 or end > memory.size:
            raise EmulatorError(f"instruction {self.current} ({self.instructions[self.current].opcode.name}): "
                                f"bytes {start}..{end} of the {Buffer(buf).name} buffer, which holds {memory.size:,} bytes")
        return memory

    def span(self, buf: int, addr: int, nbytes: int) -> np.ndarray:
        """A view of ``nbytes`` bytes of a buffer."""
        return self._check(buf, addr, addr + nbytes)[addr:addr + nbytes]

    def put(self, buf: int, addr: int, data: np.ndarray) -> None:
        self._check(buf, addr, addr + data.size)[addr:addr + data.size] = data
        if buf == _WGT:
            self._untag(addr, addr + data.size)

    def rows_view(self, buf: int, addr: int, rows: int, row_bytes: int, stride: int) -> np.ndarray:
        """uint8 view ``[rows, row_bytes]`` with ``stride`` bytes between rows."""
        if rows == 0:
            return np.zeros((0, row_bytes), dtype=np.uint8)
        memory = self._check(buf, addr, addr + (rows - 1) * stride + row_bytes)
        if stride == row_bytes:
            return memory[addr:addr + rows * row_bytes].reshape(rows, row_bytes)
        if stride > row_bytes and addr + rows * stride <= memory.size:
            return memory[addr:addr + rows * stride].reshape(rows, stride)[:, :row_bytes]
        return np.lib.stride_tricks.as_strided(memory[addr:], shape=(rows, row_bytes), strides=(stride, 1))

    def read_act32(self, buf: int, addr: int, rows: int, cols: int, stride: int = 0) -> np.ndarray:
        view = self.rows_view(buf, addr, rows, 4 * cols, stride or 4 * cols)
        return np.ascontiguousarray(view).view(np.int32).astype(np.int64)

    def write_act32(self, buf: int, addr: int, values: np.ndarray, stride: int = 0) -> None:
        values = np.asarray(values, dtype=np.int64)
        rows, cols = values.shape
        if values.size and (values.min() < ACT32.min_int or values.max() > ACT32.max_int):
            raise OverflowError("result exceeds ACT32")
        view = self.rows_view(buf, addr, rows, 4 * cols, stride or 4 * cols)
        view[...] = values.astype(np.int32).view(np.uint8).reshape(rows, 4 * cols)

    def write_a8(self, buf: int, addr: int, act: ActCodes) -> None:
        rows, n = act.codes.shape
        stride = A8_HEADER_BYTES + -(-n // 8) * 8
        view = self.rows_view(buf, addr, rows, A8_HEADER_BYTES + n, stride)
        header = np.stack([act.scale_mantissa, act.scale_exponent], axis=-1).astype(np.int32)
        view[:, :A8_HEADER_BYTES] = header.view(np.uint8).reshape(rows, A8_HEADER_BYTES)
        view[:, A8_HEADER_BYTES:] = act.codes.astype(np.int8).view(np.uint8)

    def read_a8(self, buf: int, addr: int, rows: int, stride: int, k0: int, k: int) -> ActCodes:
        view = self.rows_view(buf, addr, rows, A8_HEADER_BYTES + k0 + k, stride)
        header = np.ascontiguousarray(view[:, :A8_HEADER_BYTES]).view(np.int32).astype(np.int64)
        codes = np.ascontiguousarray(view[:, A8_HEADER_BYTES + k0:]).view(np.int8).astype(np.int64)
        return ActCodes(codes, header[:, 0], header[:, 1])

    # -- GEMM support
    def gemm_shape(self, inst: Instruction) -> tuple[TileShape, int]:
        """The weight tile shape a GEMM names and its bytes (cached by the fields that define it)."""
        key = (inst.cols, inst.depth, inst.aux, inst.sub, inst.mode, inst.flags & _HALF_ZERO)
        cached = self.gemm_shapes.get(key)
        if cached is None:
            shape = TileShape(inst.cols, inst.depth, inst.aux, inst.sub, bool(GemmMode(inst.mode).sparse),
                              bool(inst.flags & _HALF_ZERO))
            cached = self.gemm_shapes[key] = (shape, shape.nbytes)
        return cached

    def prepared_tile(self, inst: Instruction, shape: TileShape, nbytes: int) -> PreparedTile:
        addr = inst.src1_addr
        tag = self.wgt_tags.get(addr) if inst.src1_buf == _WGT else None
        key = None if tag is None else (tag, shape)
        if key is not None and key in self.tile_cache:
            return self.tile_cache[key]
        raw = self.span(inst.src1_buf, addr, nbytes)
        tile = PreparedTile(unpack_tile(shape, raw))
        if key is not None:
            self.tile_cache[key] = tile
        return tile

    def accumulator(self, inst: Instruction, rows: int) -> np.ndarray:
        return self.span(Buffer.OUT, 0, 8 * rows * inst.cols).view(np.int64).reshape(rows, inst.cols)

    def store_accumulator(self, inst: Instruction, values: np.ndarray) -> None:
        self.put(Buffer.OUT, 0, np.ascontiguousarray(values, dtype=np.int64).view(np.uint8).reshape(-1))

    def check_kv_region(self, inst: Instruction, addr: int, lay: KvStreamLayout) -> None:
        self._check(inst.dst_buf if inst.opcode is Opcode.KV_QUANT else Buffer.KV, addr, addr + lay.nbytes)

    # -- weight-buffer provenance for the tile cache
    def _untag(self, start: int, end: int) -> None:
        for addr in [a for a, tag in self.wgt_tags.items() if a < end and start < a + tag[-1]]:
            del self.wgt_tags[addr]

    # -- MEMORY opcodes
    def transfer(self, inst: Instruction) -> int:
        try:
            runs = transfer_runs(inst, self.registers)
        except IsaError as err:
            self.fail(inst, str(err))
        if not runs:
            return 0
        static = inst.rows_src == 0 and inst.start_src == 0 and inst.opcode is not Opcode.LOAD_ROWS
        plan = self.transfer_plans.get(self.current) if static else None
        if plan is None:
            plan = self._plan_transfer(inst, runs)
            if static:
                self.transfer_plans[self.current] = plan
        copies, (lo, hi), initialised = plan
        if inst.opcode is Opcode.STORE:
            for hbm_view, buf_view in copies:
                hbm_view[...] = buf_view
            if initialised:
                self.tile_cache.clear()  # a STORE into the initialised (weight) part of HBM
        else:
            for hbm_view, buf_view in copies:
                buf_view[...] = hbm_view
            if inst.buf == _WGT:
                self._untag(lo, hi)
                if inst.opcode is Opcode.LOAD:
                    start, count = runs[0]
                    self.wgt_tags[lo] = (inst.pc, inst.hbm_offset, inst.sub, inst.hbm_stride, start, count,
                                         inst.row_bytes, inst.buf_stride, hi - lo)
        return sum(n for _, n in runs) * inst.row_bytes

    def _plan_transfer(self, inst: Instruction, runs) -> tuple:
        """(``(hbm view, buffer view)`` copies, buffer byte range, touches initialised HBM) of a
        transfer's runs of rows (one, or two for a RING transfer that wraps its ring). A striped run
        is at most three copies (docs/isa.md: rows r of one ``r div sub`` share an HBM offset)."""
        mirror = inst.flags & _BUF_AT_START
        base = inst.buf_addr - (0 if mirror else runs[0][0] * inst.buf_stride)
        lanes = max(inst.sub, 1) if inst.flags & _STRIPED else 1
        copies, initialised, lo, hi = [], False, None, None
        for start, count in runs:
            if inst.opcode is Opcode.LOAD_ROWS:
                ids = self.span(inst.ids_buf, inst.ids_addr, 4 * count).view(np.int32)
                first = inst.buf_addr
                for t, row in enumerate(ids):
                    at = inst.buf_addr + t * inst.buf_stride
                    initialised |= self._lane_copy(inst, copies, int(row), int(row) + 1, lanes, at)
            else:
                first = base + start * inst.buf_stride
                end, row = start + count, start
                while row < end:  # rows in one HBM offset (a lane group), or whole lane groups
                    group_end = min((row // lanes + 1) * lanes, end)
                    if row % lanes == 0 and end - row >= 2 * lanes:
                        group_end = row + (end - row) // lanes * lanes
                    initialised |= self._lane_copy(inst, copies, row, group_end, lanes, base + row * inst.buf_stride)
                    row = group_end
            last = first + (count - 1) * inst.buf_stride + inst.row_bytes
            lo, hi = (first, last) if lo is None else (min(lo, first), max(hi, last))
        return copies, (lo, hi), initialised

    def _lane_copy(self, inst: Instruction, copies: list, row: int, end: int, lanes: int, at: int) -> bool:
        """Append the copy of rows ``row .. end-1`` (all in one lane group ``row div lanes``, or whole
        lane groups) to ``copies``; buffer row ``row`` at byte ``at``. True if it touches initialised HBM."""
        rb, stride, buf_stride = inst.row_bytes, inst.hbm_stride, inst.buf_stride
        n = end - row
        self._check(inst.buf, at, at + (n - 1) * buf_stride + rb)
        memory = self.buffers[inst.buf]
        if lanes == 1:
            pc, offset = hbm_row(inst, row)
            hbm = self._hbm(inst, pc, offset + (n - 1) * stride, rb)
            copies.append((_rows(hbm, offset, n, rb, stride), _rows(memory, at, n, rb, buf_stride)))
            return bool(offset < self.image_bytes[pc])
        group, lane = divmod(row, lanes)
        pc = inst.pc + lane
        offset = inst.hbm_offset + group * stride
        if n <= lanes - lane:  # one lane group: consecutive pseudo-channels at one offset
            self._hbm(inst, pc, offset, rb)
            self._hbm(inst, pc + n - 1, offset, rb)
            if offset + rb > int(self.used[pc:pc + n].min()):
                self.fail(inst, f"bytes {offset}..{offset + rb} of pseudo-channels {pc}..{pc + n - 1}, beyond "
                                f"the smallest ({int(self.used[pc:pc + n].min()):,} bytes)")
            hbm_view = self.hbm_lanes[pc:pc + n, offset:offset + rb]
            copies.append((hbm_view, _rows(memory, at, n, rb, buf_stride)))
            return bool(offset < self.image_bytes[pc:pc + n].max())
        groups = n // lanes  # whole lane groups from lane 0: [lanes, groups, rb] on both sides
        top = offset + (groups - 1) * stride + rb
        self._hbm(inst, pc, offset, rb)
        self._hbm(inst, pc + lanes - 1, offset, rb)
        if top > int(self.used[pc:pc + lanes].min()):
            self.fail(inst, f"bytes {offset}..{top} of pseudo-channels {pc}..{pc + lanes - 1}, beyond the "
                            f"smallest ({int(self.used[pc:pc + lanes].min()):,} bytes)")
        block = self.hbm_lanes[pc:pc + lanes]
        if rb <= stride and offset + groups * stride <= block.shape[1]:  # rows apart: a reshaped view
            hbm_view = block[:, offset:offset + groups * stride].reshape(lanes, groups, stride)[:, :, :rb]
        else:
            hbm_view = np.lib.stride_tricks.as_strided(block[:, offset:], shape=(lanes, groups, rb),
                                                       strides=(block.strides[0], stride, 1))
        if rb <= buf_stride and at + n * buf_stride <= memory.size:
            buf_view = memory[at:at + n * buf_stride].reshape(groups, lanes, buf_stride)[:, :, :rb].transpose(1, 0, 2)
        else:
            buf_view = np.lib.stride_tricks.as_strided(memory[at:], shape=(lanes, groups, rb),
                                                       strides=(buf_stride, lanes * buf_stride, 1))
        copies.append((hbm_view, buf_view))
        return bool(offset < self.image_bytes[pc:pc + lanes].max())

    def _hbm(self, inst: Instruction, pc: int, offset: int, nbytes: int) -> np.ndarray:
        if not 0 <= pc < len(self.hbm):
            self.fail(inst, f"pseudo-channel {pc} is not used by this program")
        memory = self.hbm[pc]
        if offset + nbytes > memory.size:
            self.fail(inst, f"bytes {offset}..{offset + nbytes} of pseudo-channel {pc}, which holds {memory.size:,}")
        return memory


def _rows(memory: np.ndarray, addr: int, rows: int, row_bytes: int, stride: int) -> np.ndarray:
    """View ``[rows, row_bytes]`` of ``memory`` from ``addr`` with ``stride`` bytes between rows
    (bounds checked by the caller)."""
    if stride == row_bytes or rows == 1:
        return memory[addr:addr + rows * row_bytes].reshape(rows, row_bytes)
    if stride > row_bytes and addr + rows * stride <= memory.size:
        return memory[addr:addr + rows * stride].reshape(rows, stride)[:, :row_bytes]
    return np.lib.stride_tricks.as_strided(memory[addr:], shape=(rows, row_bytes), strides=(stride, 1))
