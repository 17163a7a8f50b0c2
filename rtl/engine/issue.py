"""Instruction issue: fetch, decode, dispatch to the three units, dependency tokens, END and errors.

The routine's words (docs/isa.md, 32 bytes each) are read from device memory at
`instructions + 32 · index` for index = `entry` … `entry + count − 1`: the `instructions` pointer
is a kernel argument whose buffer sits in HBM[0], and the words come through port 0's AXI master
(`m_axi_hbm00`, shared with port 0's LOAD engine by `dma.ReadArbiter`), so the kernel needs no
master of its own for them and the program's connectivity.cfg binds every master it has.

- `Fetcher` reads blocks of up to `FETCH_WORDS` words (one read transfer at a time, only when
  the word FIFO has room for the whole block) and re-packs the beats into words (`Packer`).
- `Decoder` checks a word as `compiler.isa.decode` does: unknown opcode, a set bit outside the
  layout, a token bit the unit does not have, an undefined row or start source, inconsistent ring
  fields (all generated from compiler/isa.py's tables).
- The dispatcher sends the words in program order to one in-order queue per unit (LOAD,
  COMPUTE, STORE; END goes to COMPUTE), stops after END, and raises `NO_END` if the routine's
  `count` words hold none.
- A `UnitController` per unit takes its queue's head, waits until every token queue it pops
  holds a token (`pop_prev`/`pop_next`), takes them, starts its executor (the LOAD or STORE unit,
  rtl/engine/memory_unit.py, or the COMPUTE unit, rtl/engine/compute_unit.py) and, when it
  answers `done`, adds its pushes (`push_prev`/`push_next`) and retires the instruction.
- `TokenQueues` counts the four queues LOAD→COMPUTE, COMPUTE→LOAD, COMPUTE→STORE, STORE→COMPUTE.

END (on COMPUTE) completes once the LOAD and STORE units have drained; a token left in any
queue then is `TOKENS_LEFT` (its pushes, like the emulator's, are not made). The routine ends
when END retired or an error stopped it and every unit is idle.

Errors stop the engine with an `ErrorCode` and the index of the instruction at fault (the
status registers the host reads, rtl/engine/engine.py): dispatch stops, every unit finishes the
instruction it is executing (transfers in flight complete, so the AXI ports are left clean) and
drops the rest. The first error wins. A deadlock (every unit waiting for a token or for work
that cannot come, and none executing) is `DEADLOCK` at the lowest waiting instruction — the
instruction the emulator, running in program order, reports as popping an empty queue.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.compiler import isa
from llmfab.rtl.axi_master import TransferCommand
from llmfab.rtl.interfaces import AXI_ADDR_WIDTH

from .bytestream import Packer
from .dma import label_beats, stream_fifo
from .isa_layout import COMPUTE_LAYOUT, HEADER_LAYOUT, MEMORY_LAYOUT, WORD_BITS

WORD_BYTES = isa.WORD_BYTES
ADDR_BITS = 32  # instruction index
CYCLE_BITS = 64
TOKEN_BITS = 16  # tokens a queue can hold (a push beyond is TOKEN_OVERFLOW)
FETCH_WORDS = 4
FETCH_DEPTH = 8
UNIT_QUEUE_DEPTH = 4
# A unit controller registers `exe.start`: an instruction's trace (start .. end) spans its executor's
# cycles plus this one.
START_CYCLES = 1


class ErrorCode(enum.IntEnum):
    """The engine's error status (register `error_code`); `error_address` names the instruction."""

    NONE = 0
    UNKNOWN_OPCODE = 1
    RESERVED_BITS = 2
    TOKEN_BITS = 3  # a pop/push bit towards a unit the instruction's unit does not have
    BAD_SOURCE = 4  # rows_src or start_src undefined
    BAD_RING = 5  # ring fields without RING, or a RING transfer the ISA does not define
    NO_END = 6  # the routine's words hold no END (address: entry + count)
    TOKENS_LEFT = 7  # END found a token queue not empty
    DEADLOCK = 8  # an instruction waits for a token no instruction can still push
    NO_SEQUENCER = 9  # a COMPUTE opcode this engine has no sequencer for
    SEQUENCER_ERROR = 10  # the opcode's sequencer cannot execute these operands
    BUFFER_FAULT = 11  # a COMPUTE instruction accessed beyond a buffer
    BUFFER_RANGE = 12  # a transfer row (or LOAD_ROWS' ids) lies outside its buffer
    PORT_RANGE = 13  # a transfer row's pseudo-channel has no port
    AXI_READ = 14  # a LOAD read answered SLVERR/DECERR
    AXI_WRITE = 15  # a STORE write answered SLVERR/DECERR
    FETCH_AXI = 16  # an instruction fetch answered SLVERR/DECERR (address: the word fetched)
    RING_OVERFLOW = 17  # a RING transfer has more slots than its ring
    TOKEN_OVERFLOW = 18  # a token queue would exceed 2^16 - 1 tokens


ERROR_MESSAGES = {
    ErrorCode.NONE: "no error",
    ErrorCode.UNKNOWN_OPCODE: "unknown opcode",
    ErrorCode.RESERVED_BITS: "reserved bits are set",
    ErrorCode.TOKEN_BITS: "pops or pushes a token queue its unit does not have",
    ErrorCode.BAD_SOURCE: "undefined row or start source",
    ErrorCode.BAD_RING: "ring fields are inconsistent",
    ErrorCode.NO_END: "the routine ran past its last instruction without END",
    ErrorCode.TOKENS_LEFT: "END with tokens left in a queue; every push must be popped",
    ErrorCode.DEADLOCK: "pops a token queue that no instruction can still push: the units deadlock",
    ErrorCode.NO_SEQUENCER: "this engine has no sequencer for the opcode",
    ErrorCode.SEQUENCER_ERROR: "the opcode's sequencer cannot execute these operands",
    ErrorCode.BUFFER_FAULT: "accessed bytes beyond a buffer",
    ErrorCode.BUFFER_RANGE: "a transfer row lies outside its buffer",
    ErrorCode.PORT_RANGE: "a transfer row's pseudo-channel has no HBM port",
    ErrorCode.AXI_READ: "an HBM read answered with an error response",
    ErrorCode.AXI_WRITE: "an HBM write answered with an error response",
    ErrorCode.FETCH_AXI: "the instruction fetch answered with an error response",
    ErrorCode.RING_OVERFLOW: "a RING transfer has more slots than its ring",
    ErrorCode.TOKEN_OVERFLOW: "a token queue overflowed",
}


def describe_error(code: int, address: int) -> str:
    """The host's message for the status registers `error_code` / `error_address`."""
    try:
        text = ERROR_MESSAGES[ErrorCode(code)]
    except ValueError:
        text = f"error code {code}"
    return f"instruction {address}: {text}" if code else text


class UnitId(enum.IntEnum):
    LOAD = 0
    COMPUTE = 1
    STORE = 2


UNIT_IDS = {isa.Unit.LOAD: UnitId.LOAD, isa.Unit.COMPUTE: UnitId.COMPUTE, isa.Unit.STORE: UnitId.STORE}

# The queues (docs/isa.md "Dependency tokens") and, per unit, the queue each token bit uses.
QUEUES = ("load_compute", "compute_load", "compute_store", "store_compute")
TOKEN_QUEUES = {  # unit -> {bit: queue}
    UnitId.LOAD: {"pop_next": "compute_load", "push_next": "load_compute"},
    UnitId.COMPUTE: {"pop_prev": "load_compute", "pop_next": "store_compute",
                     "push_prev": "compute_load", "push_next": "compute_store"},
    UnitId.STORE: {"pop_prev": "compute_store", "push_prev": "store_compute"},
}

# An instruction in flight: the word and its index.
Issued = data.StructLayout({"word": unsigned(WORD_BITS), "addr": unsigned(ADDR_BITS)})


def executor_signature() -> wiring.Signature:
    """Controller -> executor (the executor's side flips it): `start` for one cycle with `word`
    and `addr` held until `done`; `done` for one cycle with `error` (an ErrorCode, 0 if none)."""
    return wiring.Signature({"start": Out(1), "word": Out(WORD_BITS), "addr": Out(ADDR_BITS),
                             "done": In(1), "error": In(8)})


def trace_signature() -> wiring.Signature:
    """What a unit shows of its instructions, for the cocotb harness: `busy` and the running
    instruction's `addr`/`opcode`; at every retirement `retired` flips and `last_*` hold the
    retired instruction (`last_ready`: cycle it reached the head of its queue, `last_start`: cycle
    its tokens were taken and it started, `last_end`: cycle it completed)."""
    return wiring.Signature({"busy": Out(1), "addr": Out(ADDR_BITS), "opcode": Out(8), "retired": Out(1),
                             "last_addr": Out(ADDR_BITS), "last_opcode": Out(8), "last_ready": Out(CYCLE_BITS),
                             "last_start": Out(CYCLE_BITS), "last_end": Out(CYCLE_BITS)})


# ---------------------------------------------------------------- decoder


def _used_mask(fields) -> int:
    mask = 0
    for f in fields:
        mask |= ((1 << f.width) - 1) << f.lsb
    return mask


def _has_field(fields, name: str) -> bool:
    return any(f.name == name for f in fields)


class Decoder(wiring.Component):
    """Combinational checks of one word (module docstring): `unit`, `is_end`, `error` (ErrorCode)."""

    def __init__(self):
        super().__init__({"word": In(WORD_BITS), "unit": Out(2), "is_end": Out(1), "error": Out(8)})

    def elaborate(self, platform):
        m = Module()
        word = self.word
        header = HEADER_LAYOUT(word)
        mem = MEMORY_LAYOUT(word)
        opcode = header.opcode
        known = Cat(*(opcode == op for op in isa.Opcode)).any()
        memory_ops = [op for op in isa.Opcode if isa.is_memory(op)]
        is_memory = Cat(*(opcode == op for op in memory_ops)).any()
        unit = Signal(2)
        for op in isa.Opcode:
            with m.If(opcode == op):
                m.d.comb += unit.eq(UNIT_IDS[isa.unit_of(op)])
        m.d.comb += [self.unit.eq(unit), self.is_end.eq(opcode == isa.Opcode.END)]

        reserved = Mux(is_memory, word & Const(~_used_mask(isa.MEMORY) & ((1 << WORD_BITS) - 1), WORD_BITS),
                       word & Const(~_used_mask(isa.COMPUTE) & ((1 << WORD_BITS) - 1), WORD_BITS)).any()
        bad_tokens = (((unit == UnitId.LOAD) & (header.pop_prev | header.push_prev))
                      | ((unit == UnitId.STORE) & (header.pop_next | header.push_next)))
        bad_source = (header.rows_src > max(isa.RowSource)) | (is_memory & (mem.start_src > max(isa.StartSource)))
        bad_ring = Const(0)
        ring_flag = getattr(isa.Flag, "RING", None)
        ring_fields = [f for f in ("ring_part", "align_shift", "split_shift") if _has_field(isa.MEMORY, f)]
        if ring_flag is not None and ring_fields:
            ring = (header.flags & int(ring_flag)) != 0
            extra = Cat(*(getattr(mem, f) != 0 for f in ring_fields)).any()
            wrong = ((opcode == isa.Opcode.LOAD_ROWS) | (header.rows_src == isa.RowSource.IMM)
                     | ((header.flags & int(isa.Flag.BUF_AT_START)) == 0))
            if _has_field(isa.MEMORY, "ring_part") and hasattr(isa, "RingPart"):
                wrong |= mem.ring_part > max(isa.RingPart)
            bad_ring = is_memory & Mux(ring, wrong, extra)
        with m.If(~known):
            m.d.comb += self.error.eq(ErrorCode.UNKNOWN_OPCODE)
        with m.Elif(reserved):
            m.d.comb += self.error.eq(ErrorCode.RESERVED_BITS)
        with m.Elif(bad_tokens):
            m.d.comb += self.error.eq(ErrorCode.TOKEN_BITS)
        with m.Elif(bad_source):
            m.d.comb += self.error.eq(ErrorCode.BAD_SOURCE)
        with m.Elif(bad_ring):
            m.d.comb += self.error.eq(ErrorCode.BAD_RING)
        return m


# ---------------------------------------------------------------- fetch


class Fetcher(wiring.Component):
    """Words `entry` … `entry + count − 1` from `base` into the `words` stream (Issued).

    `start` (one cycle) begins; `stop` ends the issue of further reads; `idle` is high when no
    read is in flight; `all_fetched` once every word of the routine went into the stream.
    `cmd` / `beats` face port 0's read arbiter.
    """

    def __init__(self, beat_bytes: int):
        self.beat_bytes = beat_bytes
        super().__init__({"start": In(1), "stop": In(1), "base": In(AXI_ADDR_WIDTH), "entry": In(ADDR_BITS),
                          "count": In(ADDR_BITS), "words": Out(stream.Signature(Issued)), "idle": Out(1),
                          "all_fetched": Out(1), "flush": In(1),
                          "cmd": Out(stream.Signature(TransferCommand)),
                          "beats": In(stream.Signature(8 * beat_bytes))})

    def elaborate(self, platform):
        m = Module()
        bb = self.beat_bytes
        shift = (bb - 1).bit_length()
        m.submodules.packer = packer = Packer(bb, WORD_BYTES)
        queue = stream_fifo(m, "queue", Issued, FETCH_DEPTH)
        issued, remaining, received = Signal(ADDR_BITS), Signal(ADDR_BITS + 1), Signal(ADDR_BITS)
        in_flight = Signal(range(FETCH_WORDS + 1))  # words requested and not yet in the queue
        pending_cmd = Signal()
        labelling = Signal()
        first, left = Signal(range(bb)), Signal(range(WORD_BYTES * FETCH_WORDS + 1))
        with m.If(self.start):
            m.d.sync += [issued.eq(self.entry), received.eq(self.entry), remaining.eq(self.count),
                         in_flight.eq(0), pending_cmd.eq(0), labelling.eq(0)]

        block = Signal(range(FETCH_WORDS + 1))
        m.d.comb += block.eq(Mux(remaining < FETCH_WORDS, remaining, FETCH_WORDS))
        addr = Signal(AXI_ADDR_WIDTH)
        m.d.comb += addr.eq(self.base + (issued << (WORD_BYTES.bit_length() - 1)))
        nbytes = block * WORD_BYTES
        can_issue = (~self.stop & ~self.start & (remaining != 0) & (in_flight == 0) & ~labelling
                     & (queue.level + block <= FETCH_DEPTH))
        m.d.comb += [self.cmd.valid.eq(pending_cmd), self.cmd.payload.addr.eq(addr),
                     self.cmd.payload.beats.eq(((addr[:shift] if shift else 0) + nbytes + bb - 1) >> shift)]
        with m.If(can_issue & ~pending_cmd):
            m.d.sync += pending_cmd.eq(1)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [pending_cmd.eq(0), labelling.eq(1), first.eq(addr[:shift] if shift else 0), left.eq(nbytes),
                         issued.eq(issued + block), remaining.eq(remaining - block), in_flight.eq(block)]
        label_beats(m, self.beats, packer, labelling, first, left, bb)
        # words into the queue (room was reserved before the read was issued)
        m.d.comb += [queue.i.valid.eq(packer.o.valid), queue.i.payload.word.eq(packer.o.payload.data),
                     queue.i.payload.addr.eq(received), packer.o.ready.eq(queue.i.ready)]
        with m.If(queue.i.valid & queue.i.ready):
            m.d.sync += [received.eq(received + 1), in_flight.eq(in_flight - 1)]
        # the consumer side; `flush` drops the queue (after END or an error)
        m.d.comb += [self.words.valid.eq(queue.o.valid & ~self.flush), self.words.payload.eq(queue.o.payload),
                     queue.o.ready.eq(self.words.ready | self.flush)]
        m.d.comb += [self.idle.eq(~pending_cmd & ~labelling & (in_flight == 0) & packer.empty),
                     self.all_fetched.eq((remaining == 0) & ~labelling & (in_flight == 0))]
        return m


# ---------------------------------------------------------------- tokens and units


class TokenQueues(wiring.Component):
    """The four token counters. Per queue: `take` / `give` (one cycle each), `available` (a token
    is there); `overflow` pulses when a give would pass the maximum; `clear` empties them all;
    `empty` when all four are 0."""

    def __init__(self):
        members = {"clear": In(1), "overflow": Out(1), "empty": Out(1)}
        for q in QUEUES:
            members.update({f"{q}_take": In(1), f"{q}_give": In(1), f"{q}_available": Out(1)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        overflow, empty = [], []
        for q in QUEUES:
            count = Signal(TOKEN_BITS, name=f"{q}_count")
            take, give = getattr(self, f"{q}_take"), getattr(self, f"{q}_give")
            full = count == (1 << TOKEN_BITS) - 1
            overflow.append(give & ~take & full)
            empty.append(count == 0)
            m.d.comb += getattr(self, f"{q}_available").eq(count != 0)
            with m.If(self.clear):
                m.d.sync += count.eq(0)
            with m.Elif(give & ~take & ~full):
                m.d.sync += count.eq(count + 1)
            with m.Elif(take & ~give):
                m.d.sync += count.eq(count - 1)
        m.d.comb += [self.overflow.eq(Cat(*overflow).any()), self.empty.eq(Cat(*empty).all())]
        return m


class UnitController(wiring.Component):
    """One unit's in-order issue (module docstring). `queue` is its instruction queue, `exe` its
    executor; `need_*`/`take_*`/`give_*` talk to TokenQueues for the bits this unit has (see
    TOKEN_QUEUES); `abort` drops the queued instructions and the one waiting for tokens.

    `blocked`: the head waits for a token; `busy`: an instruction executes; `idle`: neither, and
    the queue is empty. `retire` pulses when an instruction completes (with `retire_error`,
    `retire_addr`, `retire_end`)."""

    def __init__(self, unit: UnitId):
        self.unit = UnitId(unit)
        self.bits = TOKEN_QUEUES[self.unit]
        members = {"queue": In(stream.Signature(Issued)), "exe": Out(executor_signature()),
                   "abort": In(1), "cycle": In(CYCLE_BITS),
                   "blocked": Out(1), "busy": Out(1), "idle": Out(1), "head_addr": Out(ADDR_BITS),
                   "running_end": Out(1),
                   "retire": Out(1), "retire_error": Out(8), "retire_addr": Out(ADDR_BITS), "retire_end": Out(1),
                   "trace": Out(trace_signature())}
        for bit in self.bits:
            kind = "take" if bit.startswith("pop") else "give"
            members[f"{kind}_{bit}"] = Out(1)
            if kind == "take":
                members[f"has_{bit}"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        head = self.queue.payload
        head_header = HEADER_LAYOUT(head.word)
        running = Signal(Issued)
        run_header = HEADER_LAYOUT(running.word)
        busy = Signal()
        ready_at, start_at = Signal(CYCLE_BITS), Signal(CYCLE_BITS)
        waiting = Signal()  # the head has been seen (its ready cycle is recorded)
        pops = [bit for bit in self.bits if bit.startswith("pop")]
        pushes = [bit for bit in self.bits if bit.startswith("push")]
        missing = Cat(*(getattr(head_header, bit) & ~getattr(self, f"has_{bit}") for bit in pops)).any() if pops else Const(0)
        go = self.queue.valid & ~busy & ~self.abort & ~missing
        m.d.comb += [
            self.queue.ready.eq((go | self.abort) & ~busy),
            self.blocked.eq(self.queue.valid & ~busy & missing & ~self.abort),
            self.busy.eq(busy), self.idle.eq(~busy & ~self.queue.valid),
            self.head_addr.eq(head.addr),
            self.exe.word.eq(running.word), self.exe.addr.eq(running.addr),
            self.running_end.eq(busy & (run_header.opcode == isa.Opcode.END)),
        ]
        for bit in pops:
            m.d.comb += getattr(self, f"take_{bit}").eq(go & getattr(head_header, bit))
        with m.If(self.queue.valid & ~busy & ~waiting):
            m.d.sync += [waiting.eq(1), ready_at.eq(self.cycle)]
        with m.If(go):
            m.d.sync += [busy.eq(1), running.eq(head), start_at.eq(self.cycle), waiting.eq(0)]
        with m.If(self.abort & ~busy):
            m.d.sync += waiting.eq(0)
        started = Signal()  # START_CYCLES
        m.d.sync += started.eq(go)
        m.d.comb += self.exe.start.eq(started)
        done = busy & self.exe.done
        is_end = run_header.opcode == isa.Opcode.END
        for bit in pushes:
            m.d.comb += getattr(self, f"give_{bit}").eq(done & ~is_end & (self.exe.error == 0)
                                                        & getattr(run_header, bit))
        m.d.comb += [self.retire.eq(done), self.retire_error.eq(self.exe.error), self.retire_addr.eq(running.addr),
                     self.retire_end.eq(is_end)]
        with m.If(done):
            m.d.sync += busy.eq(0)
        # trace
        t = self.trace
        m.d.comb += [t.busy.eq(busy), t.addr.eq(running.addr), t.opcode.eq(run_header.opcode)]
        with m.If(done):
            m.d.sync += [t.retired.eq(~t.retired), t.last_addr.eq(running.addr), t.last_opcode.eq(run_header.opcode),
                         t.last_ready.eq(Mux(ready_at > start_at, start_at, ready_at)), t.last_start.eq(start_at),
                         t.last_end.eq(self.cycle)]
        return m


class IssueUnit(wiring.Component):
    """Fetch, decode, dispatch, the three unit controllers and the token queues (module docstring).

    `launch` (one cycle) starts a routine: `base`, `entry`, `count` name its words. Executors:
    `load`, `compute`, `store`. The LOAD and STORE units report `load_idle`… through the
    controllers; `end_drained` tells the COMPUTE executor that END may complete. External errors
    (`ext_error` with `ext_error_addr`) stop the run like internal ones. `finished` pulses when
    the routine ended; `error_code` / `error_addr` / `retired` hold until the next launch.
    """

    def __init__(self, beat_bytes: int):
        self.beat_bytes = beat_bytes
        super().__init__({
            "launch": In(1), "base": In(AXI_ADDR_WIDTH), "entry": In(ADDR_BITS), "count": In(ADDR_BITS),
            "cycle": In(CYCLE_BITS),
            "fetch_cmd": Out(stream.Signature(TransferCommand)), "fetch_data": In(stream.Signature(8 * beat_bytes)),
            "fetch_error": In(1),
            "load": Out(executor_signature()), "compute": Out(executor_signature()), "store": Out(executor_signature()),
            "ext_error": In(8), "ext_error_addr": In(ADDR_BITS),
            "end_drained": Out(1), "running": Out(1), "aborting": Out(1),
            "finished": Out(1), "error_code": Out(8), "error_addr": Out(ADDR_BITS), "retired": Out(32),
            "trace": Out(wiring.Signature({u.name.lower(): Out(trace_signature()) for u in UnitId})),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fetch = fetch = Fetcher(self.beat_bytes)
        m.submodules.decoder = decoder = Decoder()
        m.submodules.tokens = tokens = TokenQueues()
        wiring.connect(m, fetch.cmd, wiring.flipped(self.fetch_cmd))
        wiring.connect(m, wiring.flipped(self.fetch_data), fetch.beats)
        queues, controllers = {}, {}
        for unit in UnitId:
            name = unit.name.lower()
            queues[unit] = stream_fifo(m, f"{name}_queue", Issued, UNIT_QUEUE_DEPTH)
            controllers[unit] = ctl = UnitController(unit)
            m.submodules[f"{name}_unit"] = ctl
            wiring.connect(m, queues[unit].o, ctl.queue)
            wiring.connect(m, ctl.exe, wiring.flipped(getattr(self, name)))
            wiring.connect(m, ctl.trace, wiring.flipped(getattr(self.trace, name)))
            m.d.comb += ctl.cycle.eq(self.cycle)
            for bit, q in TOKEN_QUEUES[unit].items():
                if bit.startswith("pop"):
                    m.d.comb += [getattr(tokens, f"{q}_take").eq(getattr(ctl, f"take_{bit}")),
                                 getattr(ctl, f"has_{bit}").eq(getattr(tokens, f"{q}_available"))]
                else:
                    m.d.comb += getattr(tokens, f"{q}_give").eq(getattr(ctl, f"give_{bit}"))

        running, dispatching = Signal(), Signal()
        error_code, error_addr = Signal(8), Signal(ADDR_BITS)
        end_retired, retired = Signal(), Signal(32)
        error = error_code != 0
        m.d.comb += [self.error_code.eq(error_code), self.error_addr.eq(error_addr), self.retired.eq(retired),
                     self.running.eq(running), self.aborting.eq(running & error)]

        # ---- errors, first wins
        raise_code, raise_addr = Signal(8), Signal(ADDR_BITS)
        with m.If(self.launch):
            m.d.sync += [error_code.eq(0), error_addr.eq(0)]
        with m.Elif(running & ~error & (raise_code != 0)):
            m.d.sync += [error_code.eq(raise_code), error_addr.eq(raise_addr)]

        # ---- launch and fetch
        m.d.comb += [fetch.start.eq(self.launch), fetch.base.eq(self.base), fetch.entry.eq(self.entry),
                     fetch.count.eq(self.count), fetch.stop.eq(~running | error | ~dispatching),
                     tokens.clear.eq(self.launch)]
        with m.If(self.launch):
            m.d.sync += [running.eq(1), dispatching.eq(1), end_retired.eq(0), retired.eq(0)]

        # ---- dispatch in program order
        head = fetch.words.payload
        m.d.comb += decoder.word.eq(head.word)
        target_ready = Signal()
        for unit in UnitId:
            q = queues[unit]
            hit = decoder.unit == unit
            m.d.comb += [q.i.payload.eq(head), q.i.valid.eq(fetch.words.valid & dispatching & ~error
                                                             & (decoder.error == 0) & hit)]
            with m.If(hit):
                m.d.comb += target_ready.eq(q.i.ready)
        dispatch = fetch.words.valid & dispatching & ~error & (decoder.error == 0) & target_ready
        m.d.comb += [fetch.words.ready.eq(dispatch), fetch.flush.eq(~dispatching | error)]
        with m.If(dispatch & decoder.is_end):
            m.d.sync += dispatching.eq(0)

        # ---- unit activity, END and deadlock
        ctl = controllers
        idle = {u: ctl[u].idle for u in UnitId}
        m.d.comb += self.end_drained.eq(idle[UnitId.LOAD] & idle[UnitId.STORE])
        aborting = running & error
        for unit in UnitId:
            m.d.comb += ctl[unit].abort.eq(aborting)
        blocked_addrs = [Mux(ctl[u].blocked, ctl[u].head_addr, (1 << ADDR_BITS) - 1) for u in UnitId]
        lowest = blocked_addrs[0]
        for addr in blocked_addrs[1:]:
            lowest = Mux(addr < lowest, addr, lowest)
        any_blocked = Cat(*(ctl[u].blocked for u in UnitId)).any()
        executing = Cat(*((ctl[u].busy & ~ctl[u].running_end) for u in UnitId)).any()
        waiting_ok = Cat(*(ctl[u].blocked | ctl[u].idle | ctl[u].running_end for u in UnitId)).all()
        dispatch_stuck = ~dispatching | (fetch.words.valid & ~target_ready & (decoder.error == 0))
        stuck_now = running & ~error & any_blocked & ~executing & waiting_ok & dispatch_stuck
        stuck = Signal()
        m.d.sync += stuck.eq(stuck_now)

        retire_any = Cat(*(ctl[u].retire for u in UnitId))
        with m.If(~self.launch):
            m.d.sync += retired.eq(retired + sum(ctl[u].retire for u in UnitId))
        end_done = ctl[UnitId.COMPUTE].retire & ctl[UnitId.COMPUTE].retire_end & (ctl[UnitId.COMPUTE].retire_error == 0)
        with m.If(end_done):
            m.d.sync += end_retired.eq(1)

        # the first error raised this cycle (priority: units, then dispatch, tokens, external)
        with m.If(ctl[UnitId.COMPUTE].retire & (ctl[UnitId.COMPUTE].retire_error != 0)):
            m.d.comb += [raise_code.eq(ctl[UnitId.COMPUTE].retire_error), raise_addr.eq(ctl[UnitId.COMPUTE].retire_addr)]
        with m.Elif(ctl[UnitId.LOAD].retire & (ctl[UnitId.LOAD].retire_error != 0)):
            m.d.comb += [raise_code.eq(ctl[UnitId.LOAD].retire_error), raise_addr.eq(ctl[UnitId.LOAD].retire_addr)]
        with m.Elif(ctl[UnitId.STORE].retire & (ctl[UnitId.STORE].retire_error != 0)):
            m.d.comb += [raise_code.eq(ctl[UnitId.STORE].retire_error), raise_addr.eq(ctl[UnitId.STORE].retire_addr)]
        with m.Elif(end_done & ~tokens.empty):
            m.d.comb += [raise_code.eq(ErrorCode.TOKENS_LEFT), raise_addr.eq(ctl[UnitId.COMPUTE].retire_addr)]
        with m.Elif(self.ext_error != 0):
            m.d.comb += [raise_code.eq(self.ext_error), raise_addr.eq(self.ext_error_addr)]
        with m.Elif(self.fetch_error):
            m.d.comb += [raise_code.eq(ErrorCode.FETCH_AXI), raise_addr.eq(fetch.words.payload.addr)]
        with m.Elif(tokens.overflow):
            m.d.comb += raise_code.eq(ErrorCode.TOKEN_OVERFLOW)
            for unit in UnitId:
                with m.If(ctl[unit].retire):
                    m.d.comb += raise_addr.eq(ctl[unit].retire_addr)
        with m.Elif(fetch.words.valid & dispatching & (decoder.error != 0)):
            m.d.comb += [raise_code.eq(decoder.error), raise_addr.eq(head.addr)]
        with m.Elif(dispatching & ~fetch.words.valid & fetch.all_fetched):
            m.d.comb += [raise_code.eq(ErrorCode.NO_END), raise_addr.eq(self.entry + self.count)]
        with m.Elif(stuck & stuck_now):
            m.d.comb += [raise_code.eq(ErrorCode.DEADLOCK), raise_addr.eq(lowest)]

        # ---- the end of the run: END retired (or an error) and everything drained
        all_idle = Cat(*(ctl[u].idle for u in UnitId)).all()
        finish = running & (end_retired | error) & all_idle & fetch.idle & ~retire_any.any()
        m.d.comb += self.finished.eq(finish)
        with m.If(finish):
            m.d.sync += [running.eq(0), dispatching.eq(0)]
        return m
