"""A GEMM datapath: `tokens` token rows of `lanes` kept weights per cycle on a weight tile's rows.

The core computes `Y[t, n] = Σ_g P_g·M_g` for a group of up to `tokens` tokens and every output
row n of a tile (docs/numerics.md §4, §5.2), one output row at a time. Its parts:

- an **activation memory** holding the group's codes `[tokens, K]` as 16-bit values (int8 codes
  sign-extended, or int16 codes of A16 rows); a word holds `2·lanes` columns of every token, so
  one read gives a beat of every token row (loaded from packed chunks through `act`). It is
  banked, `word_bytes / 2` columns a bank, all banks on one address, so no single value grows
  with the lanes (one word of 4,096 GEMV lanes would be 131,072 bits);
- the **beat former**: it takes a row's codes, 2:4 patterns, zero points and scale multipliers
  from four `BitWindow`s on the tile's sections (which stream contiguously, row after row) and
  forms one beat per cycle: `lanes` kept codes, i.e. `lanes` columns of a dense tile or
  `2·lanes` of a 2:4 one. A row takes `B = ceil(K / Dc)` beats (`Dc` those columns); with A16
  rows every beat is sent twice, upper bytes then lower bytes (§4.3);
- **MAC units**: per token row, `lanes / products` EngineMacLanesUnits (rtl/units/mac_lanes.py)
  of `products` products each, fed the same codes and their token's activations. Unit u takes
  columns `[u·Pc, (u+1)·Pc)` of every beat (`Pc = products`, doubled under 2:4), so a beat may
  cover several quantization groups: the group size g must be a multiple of `Pc` and either a
  multiple of `Dc` (one group per beat, all units share its zero point and multiplier) or a
  power of two dividing `Dc` (`Dc / g` groups per beat, unit u in group `u·Pc / g`); `unsupported`
  says when it is neither. Units past the row's end in its last beat get multiplier 0.
  `Σ_g P_g·M_g` is linear, so the units' row sums add up to the row's `Y` (wrapping in 64 bits,
  as the emulator's int64 does);
- the **result** stream: per output row, the `tokens` row sums.

Throughput: one beat per cycle when the windows keep up (A16: one per two cycles); the MAC
units' latency (`EngineMacLanesUnit.latency`) plus one beat-former stage and the activation
read separate a row's last beat from its result.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from llmfab.rtl.units.arith import bit_length
from llmfab.rtl.units.mac_lanes import ENGINE_ROW_SUM_BITS, EngineMacLanesUnit

from .bytestream import low_ones, packed_layout

CODE_BITS = 16  # an activation column in the activation memory
PATTERN_BITS = 3
MAX_GROUP = (1 << 16) - 1  # the `aux` field
FIELD_BITS = 16  # cols, depth, aux
INVALID_PATTERN = 6  # 2:4 pattern codes are 0 .. 5
RESULT_DEPTH = 4

CoreConfig = data.StructLayout({"cols": unsigned(FIELD_BITS), "depth": unsigned(FIELD_BITS),
                                "group": unsigned(FIELD_BITS), "bits": unsigned(4), "sparse": unsigned(1),
                                "doubled": unsigned(1), "a16": unsigned(1)})


def _log2(n: int) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{n} is not a power of two")
    return n.bit_length() - 1


def times_bits(value, bits):
    """`value · bits` for a weight width of 2, 3, 4 or 8 bits (shifts and one add)."""
    return Mux(bits == 2, value << 1, Mux(bits == 3, value + (value << 1), Mux(bits == 4, value << 2, value << 3)))


def tile_row_bytes(cfg) -> tuple:
    """(code bytes, 2:4 pattern bytes) of one tile row (compiler/weight_tiles.py TileShape)."""
    kept = Mux(cfg.sparse, cfg.depth >> 1, cfg.depth)
    return (times_bits(kept, cfg.bits) + 7) >> 3, ((cfg.depth >> 2) * PATTERN_BITS + 7) >> 3


class GemmCore(wiring.Component):
    """See the module docstring. Parameters: `word_bytes` (the buffers' word: the activation
    stream's chunks), `tokens`, `lanes` and `products` (powers of two, `2 <= products <= lanes`),
    `max_depth` (K the activation memory holds).

    Members: `config` (CoreConfig, held for the instruction), `unsupported` (the group size does
    not suit the lanes), `load` (restart the activation loading: token 0, column 0), `act`
    (packed chunks: each token's codes, one transfer per token), `start` (stream the tile's
    `cols` rows), `busy`, per window `<name>_data`, `<name>_fill` in and `<name>_pop` out
    (names in `WINDOWS`; `window_bits` gives their widths, at least `window_sizes`), `result` (stream of `tokens` 64-bit row sums per output row),
    `pattern_error` (sticky: a 2:4 pattern code above 5; cleared by `clear`), `clear`.
    """

    WINDOWS = ("codes", "patterns", "zeros", "mantissas")

    def __init__(self, word_bytes: int, tokens: int, lanes: int, products: int, max_depth: int,
                 window_bits: dict[str, int] | None = None):
        for value in (word_bytes, lanes, products):
            _log2(value)
        if not 2 <= products <= lanes or tokens < 1:
            raise ValueError("need 2 <= products <= lanes and a token row")
        self.act_bytes, self.tokens, self.lanes, self.products = word_bytes, tokens, lanes, products
        self.units = lanes // products
        self.columns = max(2 * lanes, word_bytes)  # activation columns per memory word
        self.bank_columns = word_bytes // 2  # columns per bank: one chunk of int16 codes
        self.words = -(-max_depth // self.columns)
        self.max_depth = max_depth
        own = self.window_sizes(lanes, products)
        self.window_bits = window_bits or own
        if any(self.window_bits[name] < size for name, size in own.items()):
            raise ValueError(f"windows of {self.window_bits} bits are narrower than a beat needs ({own})")
        members = {"config": In(CoreConfig), "unsupported": Out(1), "load": In(1),
                   "act": In(stream.Signature(packed_layout(word_bytes))), "start": In(1), "busy": Out(1),
                   "result": Out(stream.Signature(data.ArrayLayout(signed(ENGINE_ROW_SUM_BITS), tokens))),
                   "pattern_error": Out(1), "clear": In(1)}
        for name, size in self.window_bits.items():
            members.update({f"{name}_data": In(size), f"{name}_fill": In(range(size + 8 * word_bytes + 1)),
                            f"{name}_pop": Out(range(size + 1))})
        super().__init__(members)

    @staticmethod
    def window_sizes(lanes: int, products: int) -> dict[str, int]:
        """Bits each window must show for a beat of `lanes` kept codes (codes and patterns of a
        row's last beat carry up to 7 bits of the row's byte padding; a beat covers at most one
        group per MAC unit)."""
        units = lanes // products
        return {"codes": 8 * lanes + 8, "patterns": PATTERN_BITS * lanes // 2 + 8, "zeros": 8 * units,
                "mantissas": 16 * units}

    @staticmethod
    def latency(products: int) -> int:
        """Cycles from a row's last beat leaving the beat former to its result entering the
        result FIFO: the activation read stage and the MAC units."""
        return 1 + EngineMacLanesUnit.latency(2 * products)

    def elaborate(self, platform):
        m = Module()
        d_log, p_log = _log2(self.lanes), _log2(self.products)
        units, lanes, products = self.units, self.lanes, self.products
        cfg = self.config

        # -- the row geometry, from the instruction fields (registered; the config holds still)
        sparse = cfg.sparse
        dc_log = d_log + sparse
        pc_log = p_log + sparse
        derived = {
            "beats": ((cfg.depth + (Const(1, 17) << dc_log) - 1) >> dc_log)[:FIELD_BITS],
            "rem": (cfg.depth & ((Const(1, 17) << dc_log) - 1))[:FIELD_BITS],
            "one_group": cfg.group >= (Const(1, 17) << dc_log),
            "per_group": (cfg.group >> dc_log)[:FIELD_BITS],
            "group_log": (bit_length(cfg.group) - 1)[:5],
        }
        geo = {name: Signal(Value.cast(value).shape(), name=f"geo_{name}") for name, value in derived.items()}
        for name, value in derived.items():
            m.d.sync += geo[name].eq(value)
        unit_shift = (geo["group_log"] - pc_log)[:5]
        groups_per_beat = (Const(1, units.bit_length() + 1) << (dc_log - geo["group_log"])[:5])[:units.bit_length() + 1]
        last_units = Mux(geo["rem"] == 0, units, geo["rem"] >> pc_log)[:units.bit_length() + 1]
        last_groups = Mux(geo["rem"] == 0, groups_per_beat, geo["rem"] >> geo["group_log"])[:units.bit_length() + 1]
        row_bytes, pattern_row_bytes = tile_row_bytes(cfg)
        code_bits = times_bits(Const(lanes, 16), cfg.bits)
        last_code_bits = Signal(range(self.window_bits["codes"] + 1), name="last_code_bits")
        m.d.sync += last_code_bits.eq((row_bytes << 3) - times_bits((geo["beats"] - 1) << d_log, cfg.bits))
        pattern_bits = PATTERN_BITS * lanes // 2
        last_pattern_bits = Signal(range(self.window_bits["patterns"] + 1), name="last_pattern_bits")
        m.d.sync += last_pattern_bits.eq((pattern_row_bytes << 3) - ((geo["beats"] - 1) << (d_log - 1)) * PATTERN_BITS)
        power_of_two = (cfg.group & (cfg.group - 1)) == 0
        dc_mask = (Const(1, 17) << dc_log) - 1
        pc_mask = (Const(1, 17) << pc_log) - 1
        fits = (cfg.group != 0) & ((cfg.group & pc_mask) == 0) & Mux(
            cfg.group >= (Const(1, 17) << dc_log), (cfg.group & dc_mask) == 0, power_of_two)
        m.d.comb += self.unsupported.eq(~fits)

        # -- the activation memory: banks of a token row's columns, read together
        banks = self._activation_banks(m)

        # -- the beat former (stage A: counters and windows; stage B: the MAC inputs)
        row, beat, in_group, upper = (Signal(FIELD_BITS, name="row"), Signal(FIELD_BITS, name="beat"),
                                      Signal(FIELD_BITS, name="in_group"), Signal(name="upper"))
        b_valid = Signal(name="b_valid")
        macs = [[EngineMacLanesUnit(2 * products, MAX_GROUP) for _ in range(units)] for _ in range(self.tokens)]
        for t, row_units in enumerate(macs):
            for u, unit in enumerate(row_units):
                m.submodules[f"mac_t{t}_u{u}"] = unit
        mac_ready = macs[0][0].i.ready
        advance = ~b_valid | mac_ready
        last_beat = beat == geo["beats"] - 1
        valid_units = Mux(last_beat, last_units, units)
        code_need = Mux(last_beat, last_code_bits, code_bits)
        pattern_need = Mux(sparse, Mux(last_beat, last_pattern_bits, pattern_bits), 0)
        entries = Mux(geo["one_group"], 1, Mux(last_beat, last_groups, groups_per_beat))
        group_end = Mux(geo["one_group"], in_group == geo["per_group"] - 1, 1)
        popped = Mux(geo["one_group"], group_end, entries)
        ready = ((self.codes_fill >= code_need) & (self.patterns_fill >= pattern_need)
                 & (self.zeros_fill >= entries << 3) & (self.mantissas_fill >= entries << 4))
        fire = Signal(name="fire")
        m.d.comb += fire.eq(self.busy & ready & advance)
        with m.If(fire & ~upper):
            m.d.comb += [self.codes_pop.eq(code_need), self.patterns_pop.eq(pattern_need),
                         self.zeros_pop.eq(popped << 3), self.mantissas_pop.eq(popped << 4)]

        codes = [Mux(cfg.bits == 2, self.codes_data[2 * i:2 * i + 2],
                     Mux(cfg.bits == 3, self.codes_data[3 * i:3 * i + 3],
                         Mux(cfg.bits == 4, self.codes_data[4 * i:4 * i + 4], self.codes_data[8 * i:8 * i + 8])))
                 for i in range(lanes)]
        patterns = [self.patterns_data[PATTERN_BITS * i:PATTERN_BITS * (i + 1)] for i in range(lanes // 2)]
        entry = [Mux(geo["one_group"], 0, Const(u, max(1, units.bit_length())) >> unit_shift) for u in range(units)]
        zeros = [self.zeros_data.word_select(e, 8) for e in entry]
        scales = [Mux(u < valid_units, self.mantissas_data.word_select(e, 16), 0) for u, e in enumerate(entry)]
        bad = Cat(*((u < valid_units) & (patterns[k] >= INVALID_PATTERN)
                    for u in range(units) for k in range(u * products // 2, (u + 1) * products // 2))).any()
        with m.If(self.clear):
            m.d.sync += self.pattern_error.eq(0)
        with m.Elif(fire & sparse & bad):
            m.d.sync += self.pattern_error.eq(1)

        b = {name: Signal(shape, name=f"b_{name}") for name, shape in (
            ("codes", data.ArrayLayout(unsigned(8), lanes)), ("patterns", data.ArrayLayout(unsigned(3), lanes // 2)),
            ("zeros", data.ArrayLayout(unsigned(8), units)), ("scales", data.ArrayLayout(unsigned(16), units)),
            ("slice", range(self.columns // lanes)), ("high", unsigned(1)), ("group_last", unsigned(1)),
            ("last", unsigned(1)))}
        dense_log, sparse_log = _log2(self.columns // lanes), _log2(self.columns // lanes // 2)
        for read in (bank for row_banks in banks for bank in row_banks):
            m.d.comb += [read.addr.eq(Mux(sparse, beat >> sparse_log, beat >> dense_log)), read.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [b_valid.eq(fire), b["high"].eq(upper),
                         b["slice"].eq(Mux(sparse, beat[:sparse_log], beat[:dense_log]) if dense_log else 0),
                         b["group_last"].eq(group_end & ~upper), b["last"].eq(last_beat & ~upper),
                         *(b["codes"][i].eq(c) for i, c in enumerate(codes)),
                         *(b["patterns"][i].eq(p) for i, p in enumerate(patterns)),
                         *(b["zeros"][u].eq(z) for u, z in enumerate(zeros)),
                         *(b["scales"][u].eq(s) for u, s in enumerate(scales))]

        with m.If(self.start):
            m.d.sync += [self.busy.eq(self.config.cols != 0), row.eq(0), beat.eq(0), in_group.eq(0),
                         upper.eq(cfg.a16)]
        with m.Elif(fire):
            with m.If(upper):
                m.d.sync += upper.eq(0)
            with m.Else():
                m.d.sync += upper.eq(cfg.a16)
                m.d.sync += in_group.eq(Mux(group_end, 0, in_group + 1))
                with m.If(last_beat):
                    m.d.sync += [beat.eq(0), row.eq(row + 1)]
                    with m.If(row == cfg.cols - 1):
                        m.d.sync += self.busy.eq(0)
                with m.Else():
                    m.d.sync += beat.eq(beat + 1)

        # -- the MAC units: shared codes, each token row's activations
        bank_columns = self.bank_columns
        for t, row_units in enumerate(macs):
            for u, unit in enumerate(row_units):
                beat_in = unit.i.payload
                for lane in range(2 * products):
                    column = lambda c: banks[t][c // bank_columns].data.word_select(  # noqa: E731
                        c % bank_columns, CODE_BITS).as_signed()
                    # the beat is slice `b_slice` of the word: lanes (dense) or 2·lanes (2:4) columns
                    code = _pick(b["slice"], [column(k * 2 * lanes + 2 * u * products + lane)
                                              for k in range(self.columns // lanes // 2)])
                    if lane < products:
                        dense = _pick(b["slice"], [column(k * lanes + u * products + lane)
                                                   for k in range(self.columns // lanes)])
                        code = Mux(sparse, code, dense)
                    used = sparse | (lane < products)
                    m.d.comb += beat_in.a[lane].eq(Mux(used, _byte_pass(code, b["high"]), 0))
                m.d.comb += [
                    *(beat_in.c[k].eq(b["codes"][u * products + k]) for k in range(products)),
                    *(beat_in.pattern[k].eq(b["patterns"][u * products // 2 + k]) for k in range(products // 2)),
                    beat_in.zero.eq(b["zeros"][u]), beat_in.scale.eq(b["scales"][u]), beat_in.sparse.eq(sparse),
                    beat_in.doubled.eq(cfg.doubled), beat_in.high.eq(b["high"]),
                    beat_in.group_last.eq(b["group_last"]), beat_in.last.eq(b["last"]), unit.i.valid.eq(b_valid),
                ]

        # -- row sums of every token row into the result FIFO
        m.submodules.results = results = fifo.SyncFIFO(width=self.tokens * ENGINE_ROW_SUM_BITS, depth=RESULT_DEPTH)
        sums = []
        for row_units in macs:
            total = 0
            for unit in row_units:
                total = total + unit.o.payload.row_sum
            sums.append(total[:ENGINE_ROW_SUM_BITS])
            for unit in row_units:
                m.d.comb += unit.o.ready.eq(results.w_rdy)
        m.d.comb += [results.w_en.eq(macs[0][0].o.valid), results.w_data.eq(Cat(*sums)),
                     self.result.valid.eq(results.r_rdy), self.result.payload.as_value().eq(results.r_data),
                     results.r_en.eq(self.result.ready)]
        return m

    def _activation_banks(self, m: Module) -> list[list]:
        """The activation memory as banks of `bank_columns` columns, `columns / bank_columns` per
        token row, all on one address (no value then grows with the lanes: a 4,096-lane GEMV
        word is 131,072 bits, past Amaranth's 65,536). A chunk of `act` fills one bank with int16
        codes or two with int8 codes, at its token's next columns (word `column / columns`);
        returns the banks' read ports, `[token][bank]`."""
        chunk, a16 = self.act.payload, self.config.a16
        per_bank = self.bank_columns
        per_row = self.columns // per_bank
        token = Signal(range(max(self.tokens, 2)), name="load_token")  # 1 bit at least: Verilator rejects [-1:0]
        column = Signal(FIELD_BITS + 1, name="load_column")
        word_log, bank_log = _log2(self.columns), _log2(per_bank)
        narrow = [chunk.data[8 * k:8 * k + 8].as_signed() for k in range(self.act_bytes)]
        wide = [chunk.data[16 * k:16 * k + 16].as_signed() for k in range(per_bank)]
        halves = [Signal(per_bank * CODE_BITS, name=f"load_half{h}") for h in (0, 1)]
        m.d.comb += [halves[0].eq(Cat(*(Mux(a16, w, n).as_unsigned()[:CODE_BITS] for w, n in zip(wide, narrow)))),
                     halves[1].eq(Cat(*(Cat(n, n[-1].replicate(CODE_BITS - 8)) for n in narrow[per_bank:])))]
        # int8 chunks start at an even bank (columns advance by 2·per_bank), int16 ones at any
        count = Mux(a16, chunk.count >> 1, chunk.count)
        in_first = Mux(count > per_bank, per_bank, count)
        in_second = Mux(a16 | (count <= per_bank), 0, (count - per_bank).as_unsigned())
        masks = [Signal(per_bank, name=f"load_mask{h}") for h in (0, 1)]  # signals: lowered once, not per bank
        m.d.comb += [masks[0].eq(low_ones(m, in_first, per_bank)), masks[1].eq(low_ones(m, in_second, per_bank))]
        first = column[bank_log:word_log] if word_log > bank_log else Const(0, 1)
        reads = []
        for t in range(self.tokens):
            row_reads = []
            here = self.act.valid & (token == t)
            for k in range(per_row):
                memory = Memory(shape=unsigned(per_bank * CODE_BITS), depth=self.words, init=[])
                m.submodules[f"activations_t{t}_b{k}"] = memory
                write = memory.write_port(granularity=CODE_BITS)
                row_reads.append(memory.read_port())
                second = (first + 1 == k) & ~a16 if k % 2 else Const(0)
                m.d.comb += [write.addr.eq(column >> word_log),
                             write.data.eq(Mux(second, halves[1], halves[0]) if k % 2 else halves[0]),
                             write.en.eq(Mux(here & (first == k), masks[0], Mux(here & second, masks[1], 0)))]
            reads.append(row_reads)
        m.d.comb += self.act.ready.eq(1)
        with m.If(self.load):
            m.d.sync += [token.eq(0), column.eq(0)]
        with m.Elif(self.act.valid):
            m.d.sync += column.eq(Mux(chunk.last, 0, column + Mux(a16, self.act_bytes // 2, self.act_bytes)))
            with m.If(chunk.last & (token != self.tokens - 1)):
                m.d.sync += token.eq(token + 1)
        return reads


def _pick(index, options: list):
    """`options[index]` (a mux over a few values)."""
    choice = options[0]
    for k, option in enumerate(options[1:], 1):
        choice = Mux(index == k, option, choice)
    return choice


def _byte_pass(code, high):
    """One signed-byte pass of a 16-bit code (§4.3): `lo = ((q + 128) mod 256) - 128` (the low
    byte as int8), `hi = (q - lo) / 256` (in [-128, 128]); int8 codes are their own low pass."""
    low = code[:8].as_signed()
    upper = ((code - low) >> 8)[:9].as_signed()
    return Mux(high, upper, low)
