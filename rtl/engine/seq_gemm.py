"""GEMM: activation rows x a packed weight tile, accumulated in OUT and finished to ACT32 (docs/isa.md).

Semantics are the emulator's handler (sim/emulator_ops.gemm, sim/emulator_gemm.py): for tokens
t < rows and outputs n < cols (N), over the tile's K = depth columns from column k0 of src0's
A8 rows (flag A16: A16 rows), `Y[t, n] = Σ_g P_g·M_g` (docs/numerics.md §4, §5.2), plus the
int64 accumulator `OUT[8·(t·N + n)]` unless ACC_FIRST; with ACC_LAST the result
`sat32(rshr(Y·A_t, row_shift_n − E_t))` goes to `dst + t·stride + 4n` (stride 0: 4N), else Y
goes back to the accumulator. Every mode, weight width and flag of the ISA is executed.

Datapath (rtl/engine/gemm_core.py): two GemmCores, chosen by the mode.

- GEMV and GEMV_SPARSE: one token row of `decode_lanes` kept weights per cycle, as
  `decode_lanes / p` EngineMacLanesUnits (rtl/units/mac_lanes.py) of `p = min(decode_lanes,
  unit_products)` products. Tokens run one after the other, each over the whole tile.
- GEMM and GEMM_SPARSE: `prefill_rows` token rows of `prefill_cols` kept weights per cycle
  (`prefill_cols / min(prefill_cols, unit_products)` units per token row, `prefill_rows x
  prefill_cols` products): a token group of up to `prefill_rows` tokens shares every weight
  beat, so the tile is read once per group. Each product lane sees one output row's weights at a
  time (the array is output-stationary per token row, the columns reduce over K): the tile's
  rows stream contiguously from the weight buffer, which is how the tile layout stores them.

A beat holds `L` (the core's lanes) kept codes of one output row: L columns of a dense tile,
2L of a 2:4 tile. 2- to 8-bit codes all take one beat per L codes. With A16 rows every beat is
sent twice (upper bytes, then lower bytes of the int16 codes: two passes of the 9-bit lanes,
§4.3). The code stream needs `L · bits` bits per cycle from the one port that reads the tile's
codes: with `L · bits > 8 · word_bytes` the port, not the lanes, sets the rate (a 256-byte word
feeds at most 1024 2-bit, 512 4-bit or 256 8-bit weights per cycle).

Ports: `read[0]` reads the activation rows (one token's header and codes after the other) and
then the tile's codes; `read[1]` the tile's 2:4 patterns, zero points, scale multipliers, row
shifts and the accumulator entries, through a round-robin arbiter (rtl/engine/gemm_streams.py);
`write` writes one element per cycle (gemm_output.py).

Phases of an instruction: the group's activation rows are loaded into the core (LOAD) while the
first group also divides K by the group size and checks the operands (PREP, 16 + 3 cycles);
then the tile streams through the core and the results through the output stage (STREAM);
groups follow each other until the rows are done.

Cycles from `start` to `done` (`cycles`), for rows T >= 1, N >= 1, word-aligned activation
rows (`src0_addr + 8 + k0·c` and the row stride multiples of the word; c = 2 with A16, else 1),
the tile at a word-aligned address, `B = ceil(K / Dc)` beats per row (Dc = L dense, 2L under 2:4),
`q` = 2 with A16 else 1, and the port-1 streams keeping up with the beats (their words per beat
below one, as in every case the tests time):

    cycles = Σ_groups [max(LOAD_g, PREP on the first group) + N · B · q + FILL] + 1

- `LOAD_g = Σ_tokens (max(1, words(c · K)) + 1) + 3`: one port cycle per word of a token's
  codes, the header's read between two tokens, and the reader's latency;
- `PREP = 19`: the 16-step division of K by g, the section products and the checks;
- `FILL = 4 + LATENCY_core + 4 + 2`: the section commands and the first chunk through reader
  and window (4), the beat former and MAC (`GemmCore.latency`), the output stage
  (`gemm_output.LATENCY`), the write and the group's end.

`cycles` computes this formula; the test measures it on aligned cases.

Raises `error` (with `done`, nothing written) for what the datapath does not execute: a mode
above 3, a weight width other than 2, 3, 4, 8, HALF_ZERO with 8-bit weights, K = 0 or above
`max_depth`, K not a multiple of g, a group size that does not suit the core's lanes (g must be
a multiple of the unit's columns and either a multiple of Dc or a power of two below it;
GemmCore), a section longer than a range command's 24 bits, an operand past the 28-bit byte
addresses, a written region (dst, or the accumulator without ACC_LAST) overlapping the tile,
src0, or, with ACC_LAST and no ACC_FIRST, the accumulator. After computing it also raises
`error` where the emulator raises: a 2:4 pattern code above 5, with ACC_LAST a token step
outside the MAC's ranges (mantissa in [0, 2^16), exponent in [−32, 31]; REQUANT writes
[0, 33026] and [−29, 10]) and `Y` outside 48 bits.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from llmfab.compiler.isa import Buffer, GemmMode, Opcode
from llmfab.compiler.weight_tiles import ALIGN as SECTION_ALIGN

from .bytestream import ADDR_BITS, WordReader
from .gemm_core import FIELD_BITS, GemmCore, tile_row_bytes
from .gemm_output import EXPONENT_BITS, GemmOutput
from .gemm_streams import BitWindow, ElementReader, ElementWriter, share_read_port
from .seq_support import Region, fits_signed, overlaps, too_long
from .sequencer import ROWS_BITS, Sequencer

HEADER_BYTES = 8  # int32 scale mantissa, int32 scale exponent
DIVIDE_STEPS = FIELD_BITS
PREP_CYCLES = DIVIDE_STEPS + 3
LOAD_CYCLES = 5
STREAM_CYCLES = 12
WEIGHT_BITS = (2, 3, 4, 8)
UNIT_PRODUCTS = 32  # products per EngineMacLanesUnit unless the build says otherwise


def _power_of_two(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


def _align(value):
    return (value + SECTION_ALIGN - 1) & ~(SECTION_ALIGN - 1)


class GemmSequencer(Sequencer):
    """Executes GEMM (see the module docstring). Parameters: `decode_lanes` (GEMV kept weights per
    cycle), `prefill_rows` x `prefill_cols` (GEMM token rows x kept weights per token row),
    `max_depth` (the largest K: the activation memories' depth), `unit_products` (products per
    MAC unit). Lanes and products are powers of two, at least 2."""

    OPCODES = (Opcode.GEMM,)

    def __init__(self, geometry, decode_lanes: int, prefill_rows: int, prefill_cols: int, max_depth: int = 4096,
                 unit_products: int = UNIT_PRODUCTS):
        if not all(_power_of_two(n) and n >= 2 for n in (decode_lanes, prefill_cols, unit_products)):
            raise ValueError("decode_lanes, prefill_cols and unit_products must be powers of two, at least 2")
        if prefill_rows < 1 or max_depth < 1:
            raise ValueError("prefill_rows and max_depth must be positive")
        if geometry.word_bytes < 8:
            raise ValueError("the accumulator's int64 entries need words of at least 8 bytes")
        self.decode_lanes, self.prefill_rows, self.prefill_cols = decode_lanes, prefill_rows, prefill_cols
        self.max_depth, self.unit_products = max_depth, unit_products
        super().__init__(geometry)

    def core_shape(self, mode: int) -> tuple[int, int, int]:
        """(token rows, lanes, products per unit) of the core that runs GemmMode `mode`."""
        return self.shape_of(mode, self.decode_lanes, self.prefill_rows, self.prefill_cols, self.unit_products)

    @staticmethod
    def shape_of(mode: int, decode_lanes: int, prefill_rows: int, prefill_cols: int,
                 unit_products: int = UNIT_PRODUCTS) -> tuple[int, int, int]:
        """`core_shape` of a GemmSequencer built with these parameters (without building one)."""
        if mode & 1:
            return prefill_rows, prefill_cols, min(prefill_cols, unit_products)
        return 1, decode_lanes, min(decode_lanes, unit_products)

    @classmethod
    def cycles(cls, word_bytes: int, lanes: int, products: int, token_rows: int, tokens: int, cols: int, depth: int,
               sparse: bool = False, a16: bool = False, code_offset: int = 0) -> int:
        """Cycles from start to done (the module docstring's formula) on the core of `token_rows`
        x `lanes` kept weights in units of `products`; `code_offset`: the byte offset of every
        token's first code in its buffer word."""
        words = -(-(code_offset + depth * (2 if a16 else 1)) // word_bytes)
        beats = -(-depth // (2 * lanes if sparse else lanes)) * (2 if a16 else 1)
        total = 1
        for first in range(0, tokens, token_rows):
            rows = min(token_rows, tokens - first)
            load = rows * (words + 2) + LOAD_CYCLES
            if first == 0:
                load = max(load, PREP_CYCLES + 1)
            total += load + cols * beats + STREAM_CYCLES + sparse + GemmCore.latency(products) + rows - 1
        return total

    def elaborate(self, platform):
        m = Module()
        g = self.geometry.buffers
        w = g.word_bytes
        inst = self.inst
        acc_first, acc_last, half_zero, a16 = inst.flags[0], inst.flags[1], inst.flags[2], inst.flags[3]
        use_gemm, sparse = inst.mode[0], inst.mode[1]
        n_cols, depth, group = inst.cols, inst.depth, inst.aux
        k0, row_stride = inst.imm[:16], inst.imm[16:32]
        tokens = self.rows
        token_rows = self.prefill_rows

        # -- the two cores and their shared windows on the tile's sections
        shapes = {"gemv": self.core_shape(GemmMode.GEMV), "gemm": self.core_shape(GemmMode.GEMM)}
        sizes = [GemmCore.window_sizes(lanes, products) for _, lanes, products in shapes.values()]
        window_bits = {name: max(s[name] for s in sizes) for name in GemmCore.WINDOWS}
        cores = {name: GemmCore(w, rows, lanes, products, self.max_depth, window_bits)
                 for name, (rows, lanes, products) in shapes.items()}
        for name, core in cores.items():
            m.submodules[f"{name}_core"] = core
        chosen = lambda gemm_value, gemv_value: Mux(use_gemm, gemm_value, gemv_value)  # noqa: E731
        core_unsupported = chosen(cores["gemm"].unsupported, cores["gemv"].unsupported)

        readers = {name: WordReader(g, out, shared=True) for name, out in (
            ("codes", None), ("header", HEADER_BYTES), ("act", None), ("patterns", None), ("zeros", None),
            ("mantissas", None), ("shifts", None))}
        for name, reader in readers.items():
            m.submodules[f"{name}_reader"] = reader
        m.submodules.acc_reader = acc_reader = ElementReader(g)
        load_restart, issue_restart = Signal(name="load_restart"), Signal(name="issue_restart")
        share_read_port(m, self.read[0], [readers["header"], readers["act"], readers["codes"]], "port0", load_restart)
        share_read_port(m, self.read[1], [readers["zeros"], readers["mantissas"], readers["patterns"],
                                          readers["shifts"], acc_reader], "port1", issue_restart)

        clear = Signal(name="clear")
        windows = {name: BitWindow(w, bits) for name, bits in window_bits.items()}
        windows["shifts"] = BitWindow(w, 8)
        for name, window in windows.items():
            m.submodules[f"{name}_window"] = window
            wiring.connect(m, readers[name].o, window.i)
            m.d.comb += window.clear.eq(clear)
        config = Signal.like(cores["gemv"].config)
        m.d.comb += [config.cols.eq(n_cols), config.depth.eq(depth), config.group.eq(group), config.bits.eq(inst.sub),
                     config.sparse.eq(sparse), config.doubled.eq(half_zero), config.a16.eq(a16)]
        act = readers["act"].o
        m.d.comb += [act.ready.eq(1), readers["header"].o.ready.eq(1)]
        for name, core in cores.items():
            mine = use_gemm if name == "gemm" else ~use_gemm
            m.d.comb += [core.config.eq(config), core.clear.eq(clear), core.act.payload.eq(act.payload),
                         core.act.valid.eq(act.valid & mine)]
            for window in GemmCore.WINDOWS:
                m.d.comb += [getattr(core, f"{window}_data").eq(windows[window].data),
                             getattr(core, f"{window}_fill").eq(windows[window].fill)]
        for window in GemmCore.WINDOWS:
            m.d.comb += windows[window].pop.eq(chosen(getattr(cores["gemm"], f"{window}_pop"),
                                                      getattr(cores["gemv"], f"{window}_pop")))

        # -- the output stage and the writer
        m.submodules.output = output = GemmOutput(token_rows, len(windows["shifts"].fill))
        m.submodules.writer = writer = ElementWriter(g)
        wiring.connect(m, output.o, writer.i)
        wiring.connect(m, writer.port, wiring.flipped(self.write))
        m.d.comb += [writer.buf.eq(Mux(acc_last, inst.dst_buf, Buffer.OUT)), acc_reader.buf.eq(Buffer.OUT),
                     output.acc_first.eq(acc_first), output.acc_last.eq(acc_last), output.cols.eq(n_cols),
                     output.clear.eq(clear), output.shift_data.eq(windows["shifts"].data),
                     output.shift_fill.eq(windows["shifts"].fill), windows["shifts"].pop.eq(output.shift_pop)]
        wiring.connect(m, acc_reader.o, output.acc)
        gemm_result, gemv_result = cores["gemm"].result, cores["gemv"].result
        m.d.comb += [output.result.valid.eq(chosen(gemm_result.valid, gemv_result.valid)),
                     gemm_result.ready.eq(use_gemm & output.result.ready),
                     gemv_result.ready.eq(~use_gemm & output.result.ready)]
        for r in range(token_rows):
            gemv_sum = gemv_result.payload[0] if r == 0 else 0
            gemm_sum = gemm_result.payload[r] if r < self.prefill_rows else 0
            m.d.comb += output.result.payload[r].eq(chosen(gemm_sum, gemv_sum))

        # -- operand checks that need no division
        max_depth_error = depth > self.max_depth
        static_error = Signal(name="static_error")
        m.d.comb += static_error.eq((inst.mode > 3) | ~Cat(*(inst.sub == b for b in WEIGHT_BITS)).any()
                                    | (half_zero & (inst.sub == 8)) | (depth == 0) | max_depth_error | core_unsupported)

        # -- PREP: K / g (restoring division), the tile's section offsets, region checks
        dividend, quotient = Signal(FIELD_BITS, name="dividend"), Signal(FIELD_BITS, name="quotient")
        remainder = Signal(FIELD_BITS + 1, name="remainder")
        steps = Signal(range(PREP_CYCLES + 1), name="prep_steps")
        trial = Cat(dividend[-1], remainder[:FIELD_BITS])
        with m.If(self.start):
            m.d.sync += [dividend.eq(depth), quotient.eq(0), remainder.eq(0), steps.eq(PREP_CYCLES)]
        with m.Elif(steps != 0):
            m.d.sync += steps.eq(steps - 1)
            with m.If(steps > PREP_CYCLES - DIVIDE_STEPS):
                m.d.sync += [remainder.eq(Mux(trial >= group, trial - group, trial)),
                             quotient.eq(Cat(trial >= group, quotient[:-1])), dividend.eq(dividend << 1)]
        prep_done = steps == 0

        row_bytes, pattern_row_bytes = tile_row_bytes(config)
        code_bytes, pattern_bytes, group_bytes = (Signal(32, name=n) for n in ("code_bytes", "pattern_bytes", "group_bytes"))
        m.d.sync += [code_bytes.eq(n_cols * row_bytes), pattern_bytes.eq(Mux(sparse, n_cols * pattern_row_bytes, 0)),
                     group_bytes.eq(n_cols * quotient)]
        offsets = {name: Signal(34, name=f"{name}_offset") for name in ("patterns", "zeros", "mantissas", "shifts")}
        m.d.sync += [offsets["patterns"].eq(_align(code_bytes)),
                     offsets["zeros"].eq(_align(offsets["patterns"] + pattern_bytes)),
                     offsets["mantissas"].eq(_align(offsets["zeros"] + group_bytes)),
                     offsets["shifts"].eq(_align(offsets["mantissas"] + 2 * group_bytes))]
        per_code = Mux(a16, 2, 1)
        stride = Mux(inst.stride == 0, 4 * n_cols, inst.stride)
        before_last = tokens - 1
        ends = {name: Signal(72, name=f"{name}_end") for name in ("src0", "src1", "dst", "acc")}
        m.d.sync += [ends["src0"].eq(inst.src0_addr + before_last * row_stride + HEADER_BYTES + per_code * (k0 + depth)),
                     ends["src1"].eq(inst.src1_addr + offsets["shifts"] + n_cols),
                     ends["dst"].eq(inst.dst_addr + before_last * stride + 4 * n_cols),
                     ends["acc"].eq(tokens * n_cols * 8)]
        src0 = Region(inst.src0_buf, inst.src0_addr, ends["src0"] - inst.src0_addr)
        src1 = Region(inst.src1_buf, inst.src1_addr, ends["src1"] - inst.src1_addr)
        acc_region = Region(Buffer.OUT, 0, ends["acc"])
        dst = Region(inst.dst_buf, inst.dst_addr, ends["dst"] - inst.dst_addr)
        written = Region(*(Mux(acc_last, a, b) for a, b in ((dst.buf, acc_region.buf), (dst.addr, acc_region.addr),
                                                              (dst.nbytes, acc_region.nbytes))))
        limit = 1 << ADDR_BITS  # a region may end at the last address exactly
        region_error = (ends["src0"] > limit) | (ends["src1"] > limit) | (written.end > limit) \
            | overlaps(written, src0) | overlaps(written, src1) | (acc_last & ~acc_first & overlaps(dst, acc_region)) \
            | Cat(*(too_long(size) for size in (code_bytes, pattern_bytes, 2 * group_bytes))).any()
        nothing = (tokens == 0) | (n_cols == 0)
        invalid = static_error | (remainder != 0) | (~nothing & region_error)

        # -- LOAD: each token's header and codes of the group
        start_token = Signal(ROWS_BITS, name="group_start")
        left = tokens - start_token
        group_rows = Signal(range(token_rows + 1), name="group_rows")
        rows_here = Mux(use_gemm, self.prefill_rows, 1)
        m.d.comb += group_rows.eq(Mux(left < rows_here, left, rows_here))
        issued, headers, loaded = (Signal(range(token_rows + 1), name=n) for n in ("issued", "headers", "loaded"))
        token_src = Signal(ADDR_BITS + 16, name="token_src")
        token_dst = Signal(ADDR_BITS + 16, name="token_dst")
        token_acc = Signal(ADDR_BITS + 16, name="token_acc")
        mantissas = Signal(data.ArrayLayout(unsigned(16), token_rows), name="act_mantissa")
        exponents = Signal(data.ArrayLayout(signed(EXPONENT_BITS), token_rows), name="act_exponent")
        dst_base = Signal(data.ArrayLayout(unsigned(ADDR_BITS), token_rows), name="dst_base")
        acc_base = Signal(data.ArrayLayout(unsigned(ADDR_BITS), token_rows), name="acc_base")
        m.d.comb += [output.act_mantissa.eq(mantissas), output.act_exponent.eq(exponents),
                     output.dst_base.eq(dst_base), output.acc_base.eq(acc_base), output.rows.eq(group_rows)]
        header_error = Signal(name="header_error")
        header = readers["header"].o.payload.data
        with m.If(readers["header"].o.valid):
            m.d.sync += [mantissas[headers].eq(header[:16]), exponents[headers].eq(header[32:32 + EXPONENT_BITS]),
                         headers.eq(headers + 1)]
            with m.If(acc_last & ((header[16:32] != 0) | ~fits_signed(header[32:64], EXPONENT_BITS))):
                m.d.sync += header_error.eq(1)
        with m.If(act.valid & act.payload.last):
            m.d.sync += loaded.eq(loaded + 1)

        header_cmd, act_cmd = readers["header"].cmd, readers["act"].cmd
        m.d.comb += [header_cmd.payload.buf.eq(inst.src0_buf), header_cmd.payload.addr.eq(token_src),
                     header_cmd.payload.nbytes.eq(HEADER_BYTES), act_cmd.payload.buf.eq(inst.src0_buf),
                     act_cmd.payload.addr.eq(token_src + HEADER_BYTES + per_code * k0),
                     act_cmd.payload.nbytes.eq(per_code * depth)]

        # -- STREAM: the section commands, the accumulator addresses
        section_cmds = {"codes": 0, "patterns": offsets["patterns"], "zeros": offsets["zeros"],
                        "mantissas": offsets["mantissas"], "shifts": offsets["shifts"]}
        section_bytes = {"codes": code_bytes, "patterns": pattern_bytes, "zeros": group_bytes,
                         "mantissas": 2 * group_bytes, "shifts": n_cols}
        all_ready = Cat(*(readers[name].cmd.ready for name in section_cmds)).all()
        issue_sections = Signal(name="issue_sections")
        for name, offset in section_cmds.items():
            cmd = readers[name].cmd
            m.d.comb += [cmd.payload.buf.eq(inst.src1_buf), cmd.payload.addr.eq(inst.src1_addr + offset),
                         cmd.payload.nbytes.eq(section_bytes[name]), cmd.valid.eq(issue_sections & all_ready)]
        acc_active = Signal(name="acc_active")
        acc_token = Signal(range(token_rows), name="acc_token")
        acc_col = Signal(FIELD_BITS, name="acc_col")
        acc_last_token = acc_token == group_rows - 1
        m.d.comb += [acc_reader.addr.valid.eq(acc_active),
                     acc_reader.addr.payload.eq(acc_base[acc_token] + acc_col * 8)]
        with m.If(acc_reader.addr.valid & acc_reader.addr.ready):
            m.d.sync += acc_token.eq(Mux(acc_last_token, 0, acc_token + 1))
            with m.If(acc_last_token):
                m.d.sync += acc_col.eq(acc_col + 1)
                with m.If(acc_col == n_cols - 1):
                    m.d.sync += acc_active.eq(0)

        core_busy = chosen(cores["gemm"].busy, cores["gemv"].busy)
        pattern_error = chosen(cores["gemm"].pattern_error, cores["gemv"].pattern_error)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += clear.eq(1)
                    m.d.sync += [start_token.eq(0), token_src.eq(inst.src0_addr), token_dst.eq(inst.dst_addr),
                                 token_acc.eq(0), header_error.eq(0), issued.eq(0), headers.eq(0), loaded.eq(0)]
                    m.d.comb += [core.load.eq(1) for core in cores.values()]
                    m.d.comb += load_restart.eq(1)
                    with m.If(static_error):
                        m.next = "PREP"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                both = header_cmd.ready & act_cmd.ready & (issued != group_rows)
                m.d.comb += [header_cmd.valid.eq(both), act_cmd.valid.eq(both)]
                with m.If(both):
                    m.d.sync += [dst_base[issued].eq(token_dst), acc_base[issued].eq(token_acc),
                                 token_src.eq(token_src + row_stride), token_dst.eq(token_dst + stride),
                                 token_acc.eq(token_acc + 8 * n_cols), issued.eq(issued + 1)]
                with m.If((headers == group_rows) & (loaded == group_rows)):
                    m.next = "PREP"
            with m.State("PREP"):
                with m.If(prep_done):
                    with m.If(invalid | nothing):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += issue_sections.eq(1)
                with m.If(all_ready):
                    m.d.comb += issue_restart.eq(1)
                    m.d.comb += [cores["gemm"].start.eq(use_gemm), cores["gemv"].start.eq(~use_gemm), output.start.eq(1)]
                    m.d.sync += [acc_active.eq(~acc_first), acc_token.eq(0), acc_col.eq(0)]
                    m.next = "STREAM"
            with m.State("STREAM"):
                with m.If(~core_busy & ~output.busy & writer.idle):
                    m.d.sync += [start_token.eq(start_token + rows_here), issued.eq(0), headers.eq(0), loaded.eq(0)]
                    with m.If(left > rows_here):
                        m.d.comb += [core.load.eq(1) for core in cores.values()]
                        m.d.comb += load_restart.eq(1)
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.done.eq(1), self.error.eq(invalid | header_error | output.overflow | pattern_error)]
                m.next = "IDLE"
        return m
