"""The engine's instruction set: 256-bit instruction words with VTA-style dependency tokens.

docs/isa.md is the user-facing description (field tables, opcode semantics, token protocol); this
module is its executable form: the opcodes and their units, every field's bit range, the encoder
and decoder, and :func:`row_range`, which turns an instruction's row fields and the runtime
registers into the rows it touches (the emulator and the cycle model both use it).

A word is 32 bytes, little-endian: bit ``i`` of the word is bit ``i % 8`` of byte ``i // 8``. Bits
0..31 are a header shared by every instruction; bits 32..255 follow one of two layouts, MEMORY
(LOAD, LOAD_ROWS, STORE) or COMPUTE (everything else). Unused fields must be zero.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from llmfab.errors import InputError

WORD_BYTES = 32
WORD_BITS = 8 * WORD_BYTES


class IsaError(InputError):
    """An instruction word or stream is malformed (unknown opcode, bad field, torn word)."""


class Unit(enum.Enum):
    """The three units of the engine, chained LOAD <-> COMPUTE <-> STORE."""

    LOAD = "load"
    COMPUTE = "compute"
    STORE = "store"


class Opcode(enum.IntEnum):
    """Operation codes (bits 0..7). Code 0 is invalid, so a zeroed word never executes."""

    LOAD = 0x01  # 2-D copy HBM -> on-chip buffer
    LOAD_ROWS = 0x02  # gather table rows by token ids HBM -> buffer
    STORE = 0x08  # 2-D copy on-chip buffer -> HBM
    GEMM = 0x10  # int8 (flag A16: int16) activation codes x packed weight tile (modes: GemmMode)
    REQUANT = 0x11  # ACT32 -> per-token int8 (mode ActWidth.A16: int16) codes with scale
    RMSNORM = 0x12
    ROPE = 0x13
    KV_QUANT = 0x14  # append new keys or values to a cache stream (KV4 or ACT32)
    ATTENTION = 0x15  # int8 queries x cached keys/values, causal or Λ visibility
    SILU_MUL = 0x16  # silu(src0) * src1
    ADD = 0x17  # residual add
    EMBED = 0x18  # dequantize gathered 8-bit table rows to ACT32
    END = 0x3F  # end of routine


UNIT_OF = {
    Opcode.LOAD: Unit.LOAD,
    Opcode.LOAD_ROWS: Unit.LOAD,
    Opcode.STORE: Unit.STORE,
}


def unit_of(opcode: Opcode) -> Unit:
    """The unit that executes ``opcode`` (END runs on COMPUTE and waits for nothing else)."""
    return UNIT_OF.get(Opcode(opcode), Unit.COMPUTE)


def is_memory(opcode: Opcode) -> bool:
    """True for opcodes with the MEMORY field layout."""
    return Opcode(opcode) in UNIT_OF


class Buffer(enum.IntEnum):
    """On-chip buffers (4-bit buffer ids); sizes come from the HardwareConfig's EngineParams."""

    NONE = 0
    WGT = 1  # weight tiles, norm gains, RoPE rows
    ACT = 2  # activations (ACT32, int8 codes), token ids, embedding rows
    KV = 3  # the current layer's KV cache streams
    OUT = 4  # GEMM accumulators and logits on their way to HBM


class RowSource(enum.IntEnum):
    """Where a row bound comes from: a field of the word or the runtime registers."""

    IMM = 0  # the word's ``rows`` field
    TOKENS = 1  # n_tokens register (T)
    HISTORY = 2  # position register (P): stream positions before this call
    CONTEXT = 3  # position + n_tokens (P + T)


class StartSource(enum.IntEnum):
    """First row of a MEMORY transfer (before the block shift)."""

    ZERO = 0
    HISTORY = 1  # P
    WINDOW = 2  # max(P - W + 1, 0): the oldest window token the run's first query sees (Λ)


class RingPart(enum.IntEnum):
    """Which stream positions a RING transfer addresses (MEMORY field ``ring_part``): slot 0 of the
    transfer's ring is stream position ``base``, and positions at or past ``limit`` are not in it."""

    ALL = 0  # base 0, no limit
    SINKS = 1  # base 0, limit S: the sink tokens
    WINDOW = 2  # base S, no limit: the window tokens after the sinks


class GemmMode(enum.IntEnum):
    """GEMM datapath (mode field): decode GEMV (LUT lanes) or prefill GEMM (DSP array), dense or 2:4."""

    GEMV = 0
    GEMM = 1
    GEMV_SPARSE = 2
    GEMM_SPARSE = 3

    @property
    def sparse(self) -> bool:
        return bool(self.value & 2)


class ActWidth(enum.IntEnum):
    """Activation code rows REQUANT writes (mode field): A8 int8 codes, or A16 int16 codes for an LM
    head whose recipe has head_act_bits 16 (docs/numerics.md §3.1). GEMM reads A16 rows with flag A16."""

    A8 = 0
    A16 = 1

    @property
    def bits(self) -> int:
        return 16 if self is ActWidth.A16 else 8


class KvMode(enum.IntEnum):
    """Storage of one cache stream (KV_QUANT mode; ATTENTION mode bits 0..1 keys, 2..3 values)."""

    ACT32 = 0  # unquantized ACT32
    KV4_TOKEN = 1  # 4-bit codes, scale/offset per (token, head)
    KV4_CHANNEL = 2  # 4-bit codes, scale/offset per (block of tokens, head, channel)


class Flag(enum.IntFlag):
    """Header flag bits 12..15; meaning per opcode."""

    # GEMM
    ACC_FIRST = 1  # clear the accumulator before adding this tile's K range
    ACC_LAST = 2  # apply the activation scale and write ACT32 to dst
    HALF_ZERO = 4  # zero points are stored doubled (half-integer zero points)
    A16 = 8  # src0 holds A16 rows (int16 codes); the MAC takes two passes of the 8-bit lanes
    # MEMORY
    BUF_AT_START = 1  # advance the buffer address by start * buf_stride as well as the HBM address
    RING = 2  # row bounds are stream positions mapped to the slots of a ring of `rows` slots (ring_runs)
    STRIPED = 4  # row r lives in pseudo-channel pc + r mod sub, at hbm_offset + (r div sub) * hbm_stride
    # ATTENTION / KV_QUANT
    LAMBDA = 1  # Λ cache: sinks + ring slots, Λ visibility, keys rotated by slot
    KV8 = 2  # 8-bit cache codes instead of 4-bit


@dataclass(frozen=True)
class Field:
    """One field of the word: ``width`` bits from bit ``lsb``."""

    name: str
    lsb: int
    width: int

    @property
    def msb(self) -> int:
        return self.lsb + self.width - 1


HEADER = (
    Field("opcode", 0, 8),
    Field("pop_prev", 8, 1),
    Field("pop_next", 9, 1),
    Field("push_prev", 10, 1),
    Field("push_next", 11, 1),
    Field("flags", 12, 4),
    Field("mode", 16, 4),
    Field("rows_src", 20, 4),
    Field("sub", 24, 8),
)
MEMORY = HEADER + (
    Field("buf", 32, 4),
    Field("buf_addr", 36, 28),
    Field("pc", 64, 8),
    Field("hbm_offset", 72, 32),
    Field("rows", 104, 16),
    Field("row_bytes", 120, 24),
    Field("hbm_stride", 144, 32),
    Field("buf_stride", 176, 24),
    Field("ids_buf", 200, 4),
    Field("ids_addr", 204, 24),
    Field("start_src", 228, 2),
    Field("block_shift", 230, 4),
    Field("end_ceil", 234, 1),
    Field("ring_part", 235, 2),
    Field("align_shift", 237, 4),
    Field("split_shift", 241, 4),
)
COMPUTE = HEADER + (
    Field("dst_buf", 32, 4),
    Field("dst_addr", 36, 28),
    Field("src0_buf", 64, 4),
    Field("src0_addr", 68, 28),
    Field("src1_buf", 96, 4),
    Field("src1_addr", 100, 28),
    Field("rows", 128, 16),
    Field("cols", 144, 16),
    Field("depth", 160, 16),
    Field("aux", 176, 16),
    Field("imm", 192, 32),
    Field("stride", 224, 32),
)


def layout(opcode: Opcode) -> tuple[Field, ...]:
    """The field table of ``opcode``'s word layout."""
    return MEMORY if is_memory(opcode) else COMPUTE


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction. Fields not in the opcode's layout must stay 0.

    The meaning of each field per opcode is in docs/isa.md; the scheduler builds these with the
    helpers in :mod:`llmfab.compiler.program_builder`.
    """

    opcode: Opcode
    pop_prev: int = 0
    pop_next: int = 0
    push_prev: int = 0
    push_next: int = 0
    flags: int = 0
    mode: int = 0
    rows_src: int = 0
    sub: int = 0
    # MEMORY
    buf: int = 0
    buf_addr: int = 0
    pc: int = 0
    hbm_offset: int = 0
    row_bytes: int = 0
    hbm_stride: int = 0
    buf_stride: int = 0
    ids_buf: int = 0
    ids_addr: int = 0
    start_src: int = 0
    block_shift: int = 0
    end_ceil: int = 0
    ring_part: int = 0
    align_shift: int = 0
    split_shift: int = 0
    # COMPUTE
    dst_buf: int = 0
    dst_addr: int = 0
    src0_buf: int = 0
    src0_addr: int = 0
    src1_buf: int = 0
    src1_addr: int = 0
    cols: int = 0
    depth: int = 0
    aux: int = 0
    imm: int = 0
    stride: int = 0
    # both
    rows: int = 0

    @property
    def unit(self) -> Unit:
        return unit_of(self.opcode)

    def replace(self, **changes) -> "Instruction":
        return dataclasses.replace(self, **changes)

    def encode(self) -> bytes:
        """The 32-byte little-endian word; IsaError if a field does not fit or is not in the layout."""
        fields = layout(self.opcode)
        names = {f.name for f in fields}
        word = 0
        for f in dataclasses.fields(self):
            value = int(getattr(self, f.name))
            if f.name not in names:
                if value:
                    raise IsaError(f"{Opcode(self.opcode).name}: field {f.name} is not part of its word layout "
                                   f"but is {value}")
                continue
        for f in fields:
            value = int(getattr(self, f.name))
            if not 0 <= value < (1 << f.width):
                raise IsaError(f"{Opcode(self.opcode).name}: field {f.name} = {value} does not fit in "
                               f"{f.width} bits (bits {f.lsb}..{f.msb})")
            word |= value << f.lsb
        check_tokens(self, address=None)
        check_ring(self, address=None)
        return word.to_bytes(WORD_BYTES, "little")


def check_tokens(inst: Instruction, address: int | None) -> None:
    """IsaError if the word asks for a token queue its unit does not have (LOAD has no previous
    unit, STORE no next one)."""
    where = "" if address is None else f"instruction {address}: "
    unit = unit_of(inst.opcode)
    if unit is Unit.LOAD and (inst.pop_prev or inst.push_prev):
        raise IsaError(f"{where}{Opcode(inst.opcode).name} runs on the LOAD unit, which has no previous "
                       "unit; pop_prev/push_prev must be 0")
    if unit is Unit.STORE and (inst.pop_next or inst.push_next):
        raise IsaError(f"{where}STORE runs on the STORE unit, which has no next unit; "
                       "pop_next/push_next must be 0")


_RING_FIELDS = ("ring_part", "align_shift", "split_shift")


def check_ring(inst: Instruction, address: int | None) -> None:
    """IsaError unless the ring fields are consistent: ``ring_part``, ``align_shift`` and
    ``split_shift`` only with flag RING, and a RING transfer is a LOAD or STORE whose end comes from
    a register (``rows`` holds the ring's slot count), with BUF_AT_START (the buffer mirrors the
    ring) and a defined ``ring_part``."""
    if not is_memory(inst.opcode):
        return
    where = "" if address is None else f"instruction {address} "
    name = Opcode(inst.opcode).name
    if not inst.flags & Flag.RING:
        used = [f for f in _RING_FIELDS if getattr(inst, f)]
        if used:
            raise IsaError(f"{where}({name}): field(s) {', '.join(used)} are only defined with flag RING")
        return
    problems = []
    if inst.opcode == Opcode.LOAD_ROWS:
        problems.append("LOAD_ROWS gathers by token id and cannot address a ring")
    if inst.rows_src == RowSource.IMM:
        problems.append("its end must come from a register (rows_src TOKENS, HISTORY or CONTEXT; rows holds the "
                        "ring's slot count)")
    if not inst.flags & Flag.BUF_AT_START:
        problems.append("flag BUF_AT_START must be set (the buffer mirrors the ring)")
    if inst.ring_part > max(RingPart):
        problems.append(f"ring_part {inst.ring_part} does not exist (0..{int(max(RingPart))})")
    if problems:
        raise IsaError(f"{where}({name}) with flag RING: " + "; ".join(problems))


def decode(word: bytes, address: int = 0) -> Instruction:
    """A 32-byte word -> Instruction. IsaError naming ``address`` (instruction index) for an
    unknown opcode, a set bit outside the layout, or a token bit the unit cannot use."""
    if len(word) != WORD_BYTES:
        raise IsaError(f"instruction {address}: a word is {WORD_BYTES} bytes, got {len(word)}")
    value = int.from_bytes(word, "little")
    code = value & 0xFF
    try:
        opcode = Opcode(code)
    except ValueError:
        raise IsaError(f"instruction {address} (byte offset {address * WORD_BYTES}): unknown opcode "
                       f"0x{code:02x}; the program is corrupt or was built for another ISA version") from None
    fields = layout(opcode)
    values = {f.name: (value >> f.lsb) & ((1 << f.width) - 1) for f in fields}
    used = 0
    for f in fields:
        used |= ((1 << f.width) - 1) << f.lsb
    if value & ~used:
        raise IsaError(f"instruction {address} ({opcode.name}): reserved bits are set "
                       f"(0x{value & ~used:064x}); the word is corrupt")
    values["opcode"] = opcode
    inst = Instruction(**values)
    check_tokens(inst, address)
    if inst.rows_src > max(RowSource) or inst.start_src > max(StartSource):
        raise IsaError(f"instruction {address} ({opcode.name}): row source {inst.rows_src} / start source "
                       f"{inst.start_src} does not exist; the word is corrupt")
    check_ring(inst, address)
    return inst


def encode_program(instructions) -> bytes:
    """Concatenated words of ``instructions``."""
    return b"".join(inst.encode() for inst in instructions)


def decode_program(data: bytes) -> list[Instruction]:
    """Bytes of instructions.bin -> instructions; IsaError for a torn word or a bad instruction."""
    if len(data) % WORD_BYTES:
        raise IsaError(f"instruction stream is {len(data)} bytes, not a whole number of "
                       f"{WORD_BYTES}-byte words; the file is truncated or corrupt")
    return [decode(data[i:i + WORD_BYTES], i // WORD_BYTES) for i in range(0, len(data), WORD_BYTES)]


@dataclass(frozen=True)
class Registers:
    """Runtime registers. routine/n_tokens/position are written by the host before every run;
    sinks/window/chunk once per program (from its manifest; sinks and window 0 for dense attention,
    chunk = the prefill routine's C)."""

    n_tokens: int
    position: int
    sinks: int = 0
    window: int = 0
    chunk: int = 0

    def value(self, source: RowSource, imm: int) -> int:
        """The row bound ``source`` names (int comparisons: this runs for every instruction)."""
        if source == 0:  # IMM
            return imm
        if source == 1:  # TOKENS
            return self.n_tokens
        if source == 2:  # HISTORY
            return self.position
        if source == 3:  # CONTEXT
            return self.position + self.n_tokens
        raise IsaError(f"row source {source} does not exist (0..3)")

    def start(self, source: StartSource) -> int:
        """The first row ``source`` names: 0, P, or max(P - W + 1, 0) (the window's oldest token)."""
        if source == 0:  # ZERO
            return 0
        if source == 1:  # HISTORY
            return self.position
        if source == 2:  # WINDOW
            return max(self.position - self.window + 1, 0)
        raise IsaError(f"start source {source} does not exist (0..2)")


# Plain ints of the flags the per-instruction functions below test (IntFlag arithmetic is slow).
_RING, _STRIPED = int(Flag.RING), int(Flag.STRIPED)


def hbm_row(inst: Instruction, row: int) -> tuple[int, int]:
    """(pseudo-channel, byte offset) of row ``row`` of a MEMORY instruction (STRIPED spreads rows
    round-robin over ``sub`` pseudo-channels from ``pc``)."""
    if inst.flags & _STRIPED and inst.sub > 1:
        return inst.pc + row % inst.sub, inst.hbm_offset + (row // inst.sub) * inst.hbm_stride
    return inst.pc, inst.hbm_offset + row * inst.hbm_stride


def row_range(inst: Instruction, regs: Registers) -> tuple[int, int]:
    """(first row, row count) an instruction touches under ``regs``.

    COMPUTE: rows ``0 .. value(rows_src)``. MEMORY: ``start = start(start_src) >> block_shift``
    and ``end = value(rows_src) >> block_shift`` (rounded up when end_ceil is set). A RING
    transfer may wrap around its ring: this gives its first HBM row and its total row count, and
    :func:`transfer_runs` its contiguous runs.
    """
    end = regs.value(inst.rows_src, inst.rows)
    if inst.opcode not in UNIT_OF:  # COMPUTE
        return 0, end
    if inst.flags & _RING:
        runs = ring_runs(inst, regs)
        return (runs[0][0] if runs else 0), sum(n for _, n in runs)
    shift = inst.block_shift
    start = regs.start(inst.start_src) >> shift
    end = -((-end) >> shift) if inst.end_ceil else end >> shift
    return start, max(end - start, 0)


def ring_slots(inst: Instruction, regs: Registers) -> tuple[int, int]:
    """(first slot number, slot count) of a RING transfer before the ring wraps them.

    Stream positions ``lo = start(start_src)`` .. ``hi = value(rows_src)`` are clamped to the
    ring part (``lo >= base``, and both ``<= S`` for SINKS; ``hi >= lo``); ``lo`` is rounded down
    to a multiple of ``2^align_shift`` positions from ``base``; slots are blocks of
    ``2^block_shift`` positions from ``base``: ``first = (lo - base) >> block_shift``,
    ``end = (hi - base) >> block_shift`` (rounded up with end_ceil).
    """
    part = inst.ring_part
    base = regs.sinks if part == RingPart.WINDOW else 0
    lo = max(regs.start(inst.start_src), base)
    hi = regs.value(inst.rows_src, 0)
    if part == RingPart.SINKS:
        lo, hi = min(lo, regs.sinks), min(hi, regs.sinks)
    hi = max(hi, lo)
    lo = base + ((lo - base) >> inst.align_shift << inst.align_shift)
    shift = inst.block_shift
    first = (lo - base) >> shift
    end = -((base - hi) >> shift) if inst.end_ceil else (hi - base) >> shift
    return first, max(end - first, 0)


def ring_runs(inst: Instruction, regs: Registers) -> tuple[tuple[int, int], ...]:
    """Contiguous runs ``(first HBM row, rows)`` of a RING transfer (at most two).

    Slot ``s`` of :func:`ring_slots` lives in ring slot ``s mod rows`` (``rows`` = 0: no wrap), and
    every slot is ``2^split_shift`` consecutive rows of ``row_bytes`` (so one slot can stream from
    several pseudo-channels). IsaError if the transfer has more slots than the ring.
    """
    first, count = ring_slots(inst, regs)
    if not count:
        return ()
    ring = inst.rows
    if ring:
        if count > ring:
            raise IsaError(f"{Opcode(inst.opcode).name} with flag RING: {count} slots at positions from "
                           f"{regs.start(inst.start_src)} do not fit its ring of {ring} slots")
        first %= ring
        head = min(count, ring - first)
        runs = ((first, head), (0, count - head)) if count > head else ((first, count),)
    else:
        runs = ((first, count),)
    q = 1 << inst.split_shift
    return tuple((s * q, n * q) for s, n in runs)


def transfer_runs(inst: Instruction, regs: Registers) -> tuple[tuple[int, int], ...]:
    """Contiguous runs ``(first row, rows)`` of a MEMORY instruction under ``regs`` (none if it
    moves nothing): one run, or up to two for a RING transfer that wraps."""
    if inst.flags & _RING:
        return ring_runs(inst, regs)
    start, count = row_range(inst, regs)
    return ((start, count),) if count else ()
