"""The LOAD and STORE units: one MEMORY instruction at a time, its rows spread over the HBM ports.

A `MemoryUnit` (kind "load" runs LOAD and LOAD_ROWS, kind "store" runs STORE) is the executor
behind a UnitController (rtl/engine/issue.py). For the instruction it is started with it

1. resolves the rows exactly as `compiler.isa.transfer_runs` does from the runtime registers:
   `start = start(start_src) >> block_shift`, `end = value(rows_src) >> block_shift` (rounded up
   with `end_ceil`), `count = max(end − start, 0)`; with flag `RING` the stream positions are
   clamped to the ring part (`ring_part`, sinks S), aligned down (`align_shift`), turned into
   slots, wrapped around a ring of `rows` slots (up to two runs; more slots than the ring is
   `RING_OVERFLOW`) and scaled to rows (`split_shift`) — whatever compiler/isa.py defines;
2. walks the rows in order, one per cycle: row r lives in pseudo-channel `pc` at
   `hbm_offset + r · hbm_stride`, or with `STRIPED` (and `sub` > 1) in `pc + r mod sub` at
   `hbm_offset + (r div sub) · hbm_stride`; in the buffer at `buf_addr + r · buf_stride` with
   `BUF_AT_START`, else at `buf_addr + (r − start) · buf_stride`. LOAD_ROWS reads its `count`
   int32 ids from `ids_buf` at `ids_addr` (a WordReader) and gathers table row `ids[t]` into
   buffer row t. Each row becomes a `RowRequest` on the request FIFO of its port
   (rtl/engine/dma.py); a striped transfer thus feeds all its ports, which move rows in parallel;
3. completes when every row's data is in the buffer (LOAD: every row's `load_done`) or every
   row was written and every write response is in (STORE: `store_done` and the masters'
   `write_idle`).

Every row is checked as the emulator checks it: a pseudo-channel without a port is `PORT_RANGE`,
a buffer range past the buffer's end (or an unknown buffer id; likewise LOAD_ROWS' ids) is
`BUFFER_RANGE`; the unit then stops generating rows, lets the rows in flight finish and answers
`done` with the error. `abort` (another unit's error) stops it the same way.

Cycles from the executor's `start` to the first row request: 4 (RANGE, RUN, PRODUCTS, then
the row), one more when STRIPED (the division by `sub`: `Divider` takes 1 cycle when the first
row is below `sub`, else 33), and for RING 2 more (3 with a ring of `rows` slots, whose modulo is
again 1 or 33 cycles); LOAD_ROWS: 3 cycles to the id read, then per id 3 cycles plus the
division. Then one row per cycle while the port FIFOs have room, each port moving its rows in
the DMA's row cycles (rtl/engine/dma.py); the unit answers `done` the cycle its last row is done
(STORE: and every write response is in).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.compiler import isa
from llmfab.rtl.interfaces import AXI_ADDR_WIDTH

from .buffers import BUFFERS, read_port_signature
from .bytestream import WordReader
from .dma import RowRequest
from .geometry import EngineGeometry
from .isa_layout import MEMORY_LAYOUT
from .issue import ErrorCode, executor_signature
from .sequencer import RegistersLayout

WIDE = 64  # bits of the address arithmetic (rows x strides do not wrap)

# ---------------------------------------------------------------- timing (`transfer_cycles`)
# Measured on the whole-engine trace (tests/rtl/engine/test_engine_model.py): the controller's
# start, RANGE/RUN/PRODUCTS and the first request, the last row's done and the answer.
LOAD_FIXED_CYCLES = 6
STORE_FIXED_CYCLES = 7  # ... and the last write response
GATHER_FIXED_CYCLES = 7  # LOAD_ROWS: ... and the ids' first read
EMPTY_CYCLES = 6  # an instruction that moves no row
DIVIDE_CYCLES = 33  # `Divider` when dividend >= divisor (width + 1), else 1
GATHER_ID_CYCLES = 3  # LOAD_ROWS: per id, before its division
RING_CYCLES = 2


def divide_cycles(dividend: int, divisor: int) -> int:
    return 1 if dividend < divisor else DIVIDE_CYCLES


def transfer_cycles(kind: str, rows, *, beat_bytes: int, word_bytes: int, read_latency: float, setup: int = 0) -> float:
    """Cycles from start to done of a MEMORY instruction (module docstring) moving `rows` =
    [(index, port, hbm_addr, buf_addr, nbytes, count)]: `count` rows on `port` alike for the DMA
    (same size, same alignments), the first of them the instruction's `index`-th request, with the memory answering a read
    `read_latency` cycles after its request and never stalling: the set-up (`setup`: the striped
    division, RING), one request per cycle, each port moving its rows back to back in the DMA's
    row cycles (dma.load_row_cycles / store_row_cycles; rows of more than 64 beats use their
    aligned closed form, + 1 when unaligned). `kind`: "load", "gather" (LOAD_ROWS: the ids are
    read and divided one after another, so only the last row's transfer is not hidden) or "store"."""
    from .dma import load_row_cycles, store_row_cycles

    if not rows:
        return EMPTY_CYCLES

    def row_cycles(hbm_addr: int, buf_addr: int, nbytes: int) -> int:
        beats = -(-(hbm_addr % beat_bytes + nbytes) // beat_bytes)
        if beats <= 64:
            exact = store_row_cycles if kind == "store" else load_row_cycles
            return exact(hbm_addr, buf_addr, nbytes, beat_bytes, word_bytes)
        aligned = hbm_addr % beat_bytes == 0 and buf_addr % word_bytes == 0
        return beats + (6 if kind == "store" else 4) + (not aligned)

    if kind == "gather":
        _, _, hbm_addr, buf_addr, nbytes, _ = max(rows)  # the last request's row
        return GATHER_FIXED_CYCLES + read_latency + setup + row_cycles(hbm_addr, buf_addr, nbytes)
    first: dict[int, int] = {}
    busy: dict[int, int] = {}
    for index, port, hbm_addr, buf_addr, nbytes, count in rows:
        first[port] = min(first.get(port, index), index)
        busy[port] = busy.get(port, 0) + count * row_cycles(hbm_addr, buf_addr, nbytes)
    fixed = STORE_FIXED_CYCLES if kind == "store" else LOAD_FIXED_CYCLES + read_latency
    return fixed + setup + max(first[port] + cycles for port, cycles in busy.items())


class Divider(wiring.Component):
    """Unsigned `dividend // divisor` and `% divisor`, one bit per cycle (restoring division).

    `start` for one cycle; `done` pulses with `quotient`/`remainder` valid (and held): 1 cycle
    after start when dividend < divisor, else `width + 1` cycles. divisor must not be 0.
    """

    def __init__(self, width: int = 32, divisor_width: int = 16):
        self.width, self.divisor_width = width, divisor_width
        super().__init__({"start": In(1), "dividend": In(width), "divisor": In(divisor_width),
                          "done": Out(1), "quotient": Out(width), "remainder": Out(divisor_width)})

    def elaborate(self, platform):
        m = Module()
        n = self.width
        rem = Signal(self.divisor_width + 1)
        quo = Signal(n)
        divisor = Signal(self.divisor_width)
        step = Signal(range(n + 1))
        running = Signal()
        m.d.comb += [self.quotient.eq(quo), self.remainder.eq(rem[:self.divisor_width])]
        m.d.sync += self.done.eq(0)
        with m.If(self.start):
            with m.If(self.dividend < self.divisor):
                m.d.sync += [quo.eq(0), rem.eq(self.dividend), self.done.eq(1)]
            with m.Else():
                m.d.sync += [quo.eq(self.dividend), rem.eq(0), divisor.eq(self.divisor), step.eq(n), running.eq(1)]
        with m.Elif(running):
            shifted = Cat(quo[n - 1], rem[:self.divisor_width])
            fits = shifted >= divisor
            m.d.sync += [rem.eq(Mux(fits, shifted - divisor, shifted)), quo.eq(Cat(fits, quo[:n - 1])),
                         step.eq(step - 1)]
            with m.If(step == 1):
                m.d.sync += [running.eq(0), self.done.eq(1)]
        return m


def _has(name: str) -> bool:
    return any(f.name == name for f in isa.MEMORY)


class MemoryUnit(wiring.Component):
    """The LOAD (`kind` "load") or STORE ("store") unit; see the module docstring.

    Members: `exe` (executor side), `regs`, `abort`, `bases` (the HBM port pointers), `req[p]`
    (row requests to port p), `row_done` (one bit per port), `write_idle` (one bit per port;
    STORE), `ids` (buffer read port for LOAD_ROWS' ids; at rest in the STORE unit), `busy`.
    """

    def __init__(self, kind: str, geometry: EngineGeometry):
        if kind not in ("load", "store"):
            raise ValueError(f"a memory unit is 'load' or 'store', not {kind!r}")
        self.kind, self.geometry = kind, geometry
        ports = geometry.hbm_ports
        super().__init__({
            "exe": In(executor_signature()), "regs": In(RegistersLayout), "abort": In(1),
            "bases": In(AXI_ADDR_WIDTH).array(ports),
            "req": Out(stream.Signature(RowRequest)).array(ports),
            "row_done": In(ports), "write_idle": In(ports),
            "ids": Out(read_port_signature(geometry.buffers)), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        ports = g.hbm_ports
        load = self.kind == "load"
        inst = MEMORY_LAYOUT(self.exe.word)
        regs = self.regs
        flags = inst.flags
        buf_at_start = (flags & int(isa.Flag.BUF_AT_START)) != 0
        striped = ((flags & int(isa.Flag.STRIPED)) != 0) & (inst.sub > 1)
        ring_flag = getattr(isa.Flag, "RING", None)
        ring = ((flags & int(ring_flag)) != 0) if ring_flag is not None and _has("ring_part") else None
        is_rows = inst.opcode == isa.Opcode.LOAD_ROWS if load else None

        m.submodules.divider = div = Divider(32, 16)
        if load:
            m.submodules.ids_reader = ids = WordReader(g.buffers, 4)
            wiring.connect(m, ids.port, wiring.flipped(self.ids))

        # ---- the register values the row fields name
        def value(source, imm):
            return Mux(source == isa.RowSource.TOKENS, regs.n_tokens,
                       Mux(source == isa.RowSource.HISTORY, regs.position,
                           Mux(source == isa.RowSource.CONTEXT, regs.position + regs.n_tokens, imm)))

        window_start = Signal(33)
        m.d.comb += window_start.eq(Mux(regs.position + 1 > regs.window, regs.position + 1 - regs.window, 0))
        start_value = Signal(33)
        m.d.comb += start_value.eq(Mux(inst.start_src == isa.StartSource.HISTORY, regs.position, 0))
        if hasattr(isa.StartSource, "WINDOW"):
            with m.If(inst.start_src == isa.StartSource.WINDOW):
                m.d.comb += start_value.eq(window_start)
        end_value = Signal(33)
        m.d.comb += end_value.eq(value(inst.rows_src, inst.rows))
        k = inst.block_shift
        ceil_shift = lambda v: Mux(inst.end_ceil, (v + (1 << k) - 1) >> k, v >> k)  # noqa: E731

        # ---- state
        error = Signal(8)
        outstanding = Signal(16)
        runs = [(Signal(WIDE, name=f"run{i}_first"), Signal(WIDE, name=f"run{i}_count")) for i in range(2)]
        run = Signal(2)  # the run being set up: 0, 1, then 2 = all done
        row, left = Signal(WIDE), Signal(WIDE)
        lane = Signal(8)
        quotient = Signal(32)
        hbm_off, buf_at = Signal(WIDE), Signal(WIDE)
        slot_first, slot_count = Signal(WIDE), Signal(WIDE)
        id_index = Signal(WIDE)

        sizes = {int(b): g.buffers.words[b] * g.word_bytes for b in BUFFERS}

        def in_buffer(buf, at, nbytes):
            return Cat(*((buf == b) & (at + nbytes <= size) for b, size in sizes.items())).any()

        # ---- the current row's request
        port = Signal(9)
        m.d.comb += port.eq(inst.pc + Mux(striped, lane, 0))
        base = Signal(AXI_ADDR_WIDTH)
        for p in range(ports):
            with m.If(port == p):
                m.d.comb += base.eq(self.bases[p])
        request = Signal(RowRequest)
        m.d.comb += [request.addr.eq(base + hbm_off), request.buf.eq(inst.buf), request.buf_addr.eq(buf_at),
                     request.nbytes.eq(inst.row_bytes)]
        push = Signal()
        port_ready = Signal()
        for p in range(ports):
            m.d.comb += self.req[p].payload.eq(request)
            with m.If(port == p):
                m.d.comb += [self.req[p].valid.eq(push), port_ready.eq(self.req[p].ready)]
        pushed = push & port_ready
        finished_rows = sum(self.row_done[p] for p in range(ports))
        m.d.sync += outstanding.eq(outstanding + pushed - finished_rows)
        row_ok = (port < ports) & in_buffer(inst.buf, buf_at, inst.row_bytes)
        row_error = Mux(port >= ports, ErrorCode.PORT_RANGE, ErrorCode.BUFFER_RANGE)
        drained = (outstanding == 0) & (1 if load else self.write_idle.all())

        def advance():
            """Step to the next row of a run (LOAD/STORE) or the next id (LOAD_ROWS)."""
            m.d.sync += [left.eq(left - 1), row.eq(row + 1), buf_at.eq(buf_at + inst.buf_stride)]
            with m.If(striped):
                with m.If(lane + 1 == inst.sub):
                    m.d.sync += [lane.eq(0), hbm_off.eq(hbm_off + inst.hbm_stride)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
            with m.Else():
                m.d.sync += hbm_off.eq(hbm_off + inst.hbm_stride)

        def locate(first_row):
            """Start on table row `first_row`: its lane and quotient (divided by `sub` when striped)."""
            with m.If(striped):
                m.d.comb += [div.start.eq(1), div.dividend.eq(first_row), div.divisor.eq(inst.sub)]
                m.next = "DIVIDE"
            with m.Else():
                m.d.sync += [quotient.eq(first_row), lane.eq(0)]
                m.next = "PRODUCTS"

        m.d.comb += self.busy.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.exe.start):
                    m.d.sync += [error.eq(0), run.eq(0)]
                    m.next = "RANGE"
            with m.State("RANGE"):
                m.d.comb += self.busy.eq(1)
                start = start_value >> k
                end = ceil_shift(end_value)
                m.d.sync += [runs[0][0].eq(start), runs[0][1].eq(Mux(end > start, end - start, 0)),
                             runs[1][1].eq(0)]
                if load:
                    with m.If(is_rows):
                        m.next = "IDS"
                    with m.Else():
                        m.next = "RUN"
                else:
                    m.next = "RUN"
                if ring is not None:
                    with m.If(ring):
                        part = inst.ring_part
                        ring_base = Mux(part == isa.RingPart.WINDOW, regs.sinks, 0)
                        lo0 = Mux(start_value > ring_base, start_value, ring_base)
                        hi0 = value(inst.rows_src, 0)
                        sinks = part == isa.RingPart.SINKS
                        lo1 = Mux(sinks & (lo0 > regs.sinks), regs.sinks, lo0)
                        hi1 = Mux(sinks & (hi0 > regs.sinks), regs.sinks, hi0)
                        hi2 = Mux(hi1 > lo1, hi1, lo1)
                        a = inst.align_shift
                        lo2 = ((lo1 - ring_base) >> a) << a
                        first = lo2 >> k
                        rel_end = hi2 - ring_base
                        end_slot = Mux(inst.end_ceil, (rel_end + (1 << k) - 1) >> k, rel_end >> k)
                        m.d.sync += [slot_first.eq(first), slot_count.eq(Mux(end_slot > first, end_slot - first, 0))]
                        m.next = "RING"
            if ring is not None:
                with m.State("RING"):
                    m.d.comb += self.busy.eq(1)
                    with m.If((slot_count > inst.rows) & (inst.rows != 0)):
                        m.d.sync += error.eq(ErrorCode.RING_OVERFLOW)
                        m.next = "FINISH"
                    with m.Elif(inst.rows == 0):
                        m.next = "RING_RUNS"
                    with m.Else():
                        m.d.comb += [div.start.eq(1), div.dividend.eq(slot_first), div.divisor.eq(inst.rows)]
                        m.next = "RING_MOD"
                with m.State("RING_MOD"):
                    m.d.comb += self.busy.eq(1)
                    with m.If(div.done):
                        m.d.sync += slot_first.eq(div.remainder)
                        m.next = "RING_RUNS"
                with m.State("RING_RUNS"):
                    m.d.comb += self.busy.eq(1)
                    q = inst.split_shift
                    room = Mux(inst.rows == 0, slot_count, inst.rows - slot_first)
                    head = Mux(slot_count < room, slot_count, room)
                    m.d.sync += [runs[0][0].eq(slot_first << q), runs[0][1].eq(head << q),
                                 runs[1][0].eq(0), runs[1][1].eq((slot_count - head) << q)]
                    m.next = "RUN"
            with m.State("RUN"):  # set up the next run, or finish
                m.d.comb += self.busy.eq(1)
                first, count = Mux(run[0], runs[1][0], runs[0][0]), Mux(run[0], runs[1][1], runs[0][1])
                with m.If((run == 2) | self.abort):
                    m.next = "FINISH"
                with m.Elif(count == 0):
                    m.d.sync += run.eq(run + 1)
                with m.Else():
                    m.d.sync += [row.eq(first), left.eq(count)]
                    locate(first)
            with m.State("DIVIDE"):
                m.d.comb += self.busy.eq(1)
                with m.If(div.done):
                    m.d.sync += [quotient.eq(div.quotient), lane.eq(div.remainder)]
                    m.next = "PRODUCTS"
            with m.State("PRODUCTS"):  # the row's HBM offset (and, for a run, its buffer address)
                m.d.comb += self.busy.eq(1)
                m.d.sync += hbm_off.eq(inst.hbm_offset + quotient * inst.hbm_stride)
                if load:
                    with m.If(is_rows):
                        m.next = "ID_ROW"
                    with m.Else():
                        m.d.sync += buf_at.eq(inst.buf_addr + Mux(buf_at_start, row, 0) * inst.buf_stride)
                        m.next = "ROWS"
                else:
                    m.d.sync += buf_at.eq(inst.buf_addr + Mux(buf_at_start, row, 0) * inst.buf_stride)
                    m.next = "ROWS"
            with m.State("ROWS"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.abort):
                    m.next = "FINISH"
                with m.Elif(left == 0):
                    m.d.sync += run.eq(run + 1)
                    m.next = "RUN"
                with m.Elif(~row_ok):
                    m.d.sync += error.eq(row_error)
                    m.next = "FINISH"
                with m.Elif(inst.row_bytes == 0):
                    advance()
                with m.Else():
                    m.d.comb += push.eq(1)
                    with m.If(port_ready):
                        advance()
            if load:
                ids_bytes = runs[0][1] << 2
                with m.State("IDS"):  # LOAD_ROWS: check and read the ids
                    m.d.comb += self.busy.eq(1)
                    with m.If(runs[0][1] == 0):
                        m.next = "FINISH"
                    with m.Elif(~in_buffer(inst.ids_buf, inst.ids_addr, ids_bytes)):
                        m.d.sync += error.eq(ErrorCode.BUFFER_RANGE)
                        m.next = "FINISH"
                    with m.Else():
                        m.d.comb += [ids.cmd.valid.eq(1), ids.cmd.payload.buf.eq(inst.ids_buf),
                                     ids.cmd.payload.addr.eq(inst.ids_addr), ids.cmd.payload.nbytes.eq(ids_bytes)]
                        with m.If(ids.cmd.ready):
                            m.d.sync += [id_index.eq(0), buf_at.eq(inst.buf_addr)]
                            m.next = "ID"
                with m.State("ID"):  # the next id: its pseudo-channel and offset
                    m.d.comb += self.busy.eq(1)
                    the_id = ids.o.payload.data[:32]
                    with m.If(id_index == runs[0][1]):
                        m.next = "FINISH"
                    with m.Elif(self.abort):
                        m.next = "DRAIN_IDS"
                    with m.Elif(ids.o.valid):
                        m.d.comb += ids.o.ready.eq(1)
                        locate(the_id)
                with m.State("ID_ROW"):
                    m.d.comb += self.busy.eq(1)
                    with m.If(~row_ok):
                        m.d.sync += error.eq(row_error)
                        m.next = "DRAIN_IDS"
                    with m.Elif(inst.row_bytes == 0):
                        m.d.sync += [id_index.eq(id_index + 1), buf_at.eq(buf_at + inst.buf_stride)]
                        m.next = "ID"
                    with m.Else():
                        m.d.comb += push.eq(1)
                        with m.If(port_ready):
                            m.d.sync += [id_index.eq(id_index + 1), buf_at.eq(buf_at + inst.buf_stride)]
                            m.next = "ID"
                with m.State("DRAIN_IDS"):  # drop the ids not used, so the reader is idle again
                    m.d.comb += [self.busy.eq(1), ids.o.ready.eq(1)]
                    with m.If(ids.idle):
                        m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                with m.If(drained):
                    m.d.comb += [self.exe.done.eq(1), self.exe.error.eq(error)]
                    m.next = "IDLE"
        if not load:
            m.d.comb += [self.ids.en.eq(0), self.ids.buf.eq(0), self.ids.addr.eq(0)]
        return m
