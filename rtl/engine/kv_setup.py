"""Per-instruction arithmetic of the KV sequencers: layout offsets, divisions, cursors.

A KV instruction's constants (section offsets of the stream region, `P div B`, ring positions)
depend on runtime fields and registers. The sequencers compute them once per instruction with a
short straight-line program of register assignments run inside their FSM (`setup_states`):

- `Step((signal, value), ...)`: one cycle, every assignment in parallel (values may use the
  results of earlier steps; products are plain `*`, registered at once);
- `Divide(q, r, n, d, bits)`: `q = n div d`, `r = n mod d` for unsigned `n < 2^bits` and
  `d >= 1`, on the shared `SerialDivider` (one quotient bit per cycle): `bits + 2` cycles.

`setup_cycles(steps)` is the program's length, which the cycle formulas add.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.compiler.isa import KvMode

ALIGN = 64  # stream sections start at 64-byte offsets (compiler/weight_tiles.align)


def align64(value: Value) -> Value:
    """`value` rounded up to a multiple of 64."""
    return (value + (ALIGN - 1)) & ~(ALIGN - 1)


def ceil_shift(value: Value, shift: int) -> Value:
    """`ceil(value / 2^shift)`."""
    return (value + ((1 << shift) - 1)) >> shift


class SerialDivider(wiring.Component):
    """Unsigned restoring division, one quotient bit per cycle.

    `start` (one cycle) takes `n`, `d` and `bits` (the dividend's width, at most `num_bits`);
    `busy` is high for the next `bits` cycles, after which `q = n div d` and `r = n mod d` hold
    until the next start. `d = 0` gives all-ones quotient bits (callers check d first).
    """

    def __init__(self, num_bits: int = 32, den_bits: int = 24):
        self.num_bits, self.den_bits = num_bits, den_bits
        super().__init__({"start": In(1), "n": In(num_bits), "d": In(den_bits), "bits": In(range(num_bits + 1)),
                          "busy": Out(1), "q": Out(num_bits), "r": Out(den_bits)})

    def elaborate(self, platform):
        m = Module()
        nb = self.num_bits
        dividend = Signal(nb)
        divisor = Signal(self.den_bits)
        remainder = Signal(self.den_bits + 1)
        left = Signal(range(nb + 1))
        trial = Signal(self.den_bits + 2)
        m.d.comb += [trial.eq((remainder << 1) | dividend[nb - 1]), self.busy.eq(left != 0),
                     self.r.eq(remainder)]
        with m.If(self.start):
            m.d.sync += [dividend.eq(self.n << (nb - self.bits).as_unsigned()), divisor.eq(self.d), remainder.eq(0),
                         self.q.eq(0), left.eq(self.bits)]
        with m.Elif(left != 0):
            fits = trial >= divisor
            m.d.sync += [dividend.eq(dividend << 1), left.eq(left - 1), self.q.eq((self.q << 1) | fits),
                         remainder.eq(trial - (fits * divisor))]
        return m


class Step:
    """One cycle of parallel register assignments, given as (signal, value) pairs."""

    def __init__(self, *assignments):
        self.assignments = assignments


@dataclass
class Divide:
    """`q = n div d`, `r = n mod d` (either may be None) with an n of `bits` bits."""

    q: Signal | None
    r: Signal | None
    n: Value
    d: Value
    bits: int = 32


def setup_cycles(steps: list) -> int:
    """Cycles `setup_states` spends on `steps`."""
    return sum(1 if isinstance(step, Step) else step.bits + 2 for step in steps)


def setup_states(m: Module, name: str, steps: list, divider: SerialDivider, then: str) -> str:
    """Add the states of `steps` to the FSM being built (call inside `with m.FSM()`); the last
    one goes to state `then`. Returns the first state's name."""
    names = [f"{name}_{k}" for k in range(len(steps))] + [then]
    for k, step in enumerate(steps):
        if isinstance(step, Step):
            with m.State(names[k]):
                m.d.sync += [target.eq(value) for target, value in step.assignments]
                m.next = names[k + 1]
            continue
        with m.State(names[k]):
            m.d.comb += [divider.start.eq(1), divider.n.eq(step.n), divider.d.eq(step.d), divider.bits.eq(step.bits)]
            m.next = f"{names[k]}_wait"
        with m.State(f"{names[k]}_wait"):
            with m.If(~divider.busy):
                if step.q is not None:
                    m.d.sync += step.q.eq(divider.q)
                if step.r is not None:
                    m.d.sync += step.r.eq(divider.r)
                m.next = names[k + 1]
    return names[0]


WIDE = 48  # products of the layout arithmetic, before they are checked against the buffer size


class StreamRegs:
    """One dense stream region's layout (compiler/kv_layout.KvStreamLayout) as registers, and the
    setup steps computing them from the stream's `mode` (KvMode), `kv` heads, `width` = KV·D,
    `head_dim`, `block` B, `cap` and `kv8`:

    - `steps_a` (3 steps): `code_row`, `head_bytes` (one head's codes), `stat_row`, `stats_offset`;
    - `division`: `stat_blocks = cap div B`, `cap_rem` (per channel only; B must be nonzero);
    - `steps_b` (3 steps): `staging_offset`, `end` (the region's bytes).

    Extra assignments may be appended to a step's `assignments`.
    """

    def __init__(self, name: str, mode, kv, width, head_dim, block, cap, kv8):
        self.mode = mode
        self.act32, self.token, self.channel = (mode == int(KvMode.ACT32), mode == int(KvMode.KV4_TOKEN),
                                                mode == int(KvMode.KV4_CHANNEL))
        new = lambda field, width_=WIDE: Signal(width_, name=f"{name}_{field}")  # noqa: E731
        self.code_row, self.head_bytes, self.stat_row = new("code_row", 20), new("head_bytes", 20), new("stat_row", 24)
        self.stat_blocks, self.cap_rem = new("stat_blocks", 32), new("cap_rem", 24)
        self.cap_codes, self.stats_offset, self.stat_bytes = new("cap_codes"), new("stats_offset"), new("stat_bytes")
        self.staging_offset, self.end = new("staging_offset"), new("end")
        self.steps_a = [
            Step((self.code_row, Mux(self.act32, 4 * width, Mux(kv8, width, width >> 1))),
                 (self.head_bytes, Mux(self.act32, 4 * head_dim, Mux(kv8, head_dim, head_dim >> 1))),
                 (self.stat_row, Mux(self.channel, 8 * width, Mux(self.token, 8 * kv, 0)))),
            Step((self.cap_codes, cap * self.code_row)),
            Step((self.stats_offset, align64(self.cap_codes))),
        ]
        self.division = Divide(self.stat_blocks, self.cap_rem, cap, block, 32)
        self.steps_b = [
            Step((self.stat_bytes, Mux(self.channel, self.stat_blocks, Mux(self.token, cap, 0)) * self.stat_row)),
            Step((self.staging_offset, self.stats_offset + align64(self.stat_bytes))),
            Step((self.end, self.staging_offset + align64(Mux(self.channel, 4 * block * width, 0)))),
        ]


def merged(*programs: list) -> list:
    """Programs of the same shape (Steps and Divides at the same places) run side by side: the
    Steps of each position merged into one; Divides are kept one after the other."""
    out = []
    for items in zip(*programs):
        if all(isinstance(item, Step) for item in items):
            out.append(Step(*(pair for item in items for pair in item.assignments)))
        else:
            out.extend(items)
    return out


def code_row_bytes(act32, kv8, width):
    """Bytes of one token's codes (or ACT32 values) of `width` elements."""
    return Mux(act32, 4 * width, Mux(kv8, width, width >> 1))


def minimum(a, b):
    return Mux(a < b, a, b)


class LambdaRegs:
    """One Λ stream region's layout (compiler/kv_layout.LambdaStreamLayout) as registers, and the
    setup program computing them from the stream's `mode`, `kv` heads, `width` = KV·D, `head_dim`,
    `block` B, the registers S (`sinks`), W (`window`), C (`chunk`) and `kv8`.

    Token streams (ACT32, per token): `token_slots` = S + W + C slots, `codes` and `stats` section
    offsets. Per channel: `sink_block` = min(B, S) (0 without sinks), `window_block` = min(B, W),
    `window_slots` = ceil(W/Bw) + ceil(C/Bw) + 1, `raw_ring` = Bw + C, and the offsets of the six
    sections (`sink_codes`, `sink_stats`, `sink_raw`, `window_codes`, `window_stats`,
    `window_raw`); `end` is the region's bytes. `program` is a list for `setup_states`.
    """

    SECTIONS = ("sink_codes", "sink_stats", "sink_raw", "window_codes", "window_stats", "window_raw")

    def __init__(self, name: str, mode, kv, width, head_dim, block, sinks, window, chunk, kv8):
        self.act32, self.token, self.channel = (mode == int(KvMode.ACT32), mode == int(KvMode.KV4_TOKEN),
                                                mode == int(KvMode.KV4_CHANNEL))
        new = lambda field, width_=WIDE: Signal(width_, name=f"{name}_{field}")  # noqa: E731
        self.code_row, self.head_bytes = new("code_row", 20), new("head_bytes", 20)
        self.token_slots, self.sink_block, self.window_block = new("token_slots", 18), new("sink_block", 16), \
            new("window_block", 16)
        self.sink_slots, self.window_slots, self.raw_ring = new("sink_slots", 18), new("window_slots", 18), \
            new("raw_ring", 18)
        slots_w, slots_c = new("slots_w", 18), new("slots_c", 18)
        sizes = {k: new(f"{k}_size") for k in self.SECTIONS + ("codes", "stats")}
        self.offsets = {k: new(k) for k in self.SECTIONS + ("codes", "stats")}
        self.end = new("end")
        sink_block, window_block = self.sink_block, self.window_block
        o = self.offsets
        self.program = [
            Step((self.code_row, code_row_bytes(self.act32, kv8, width)),
                 (self.head_bytes, code_row_bytes(self.act32, kv8, head_dim)),
                 (self.token_slots, sinks + window + chunk),
                 (sink_block, Mux(sinks == 0, 0, minimum(block, sinks))), (window_block, minimum(block, window))),
            Divide(self.sink_slots, None, Mux(sinks == 0, 0, sinks + sink_block - 1), Mux(sinks == 0, 1, sink_block), 17),
            Divide(slots_w, None, window + window_block - 1, window_block, 17),
            Divide(slots_c, None, chunk + window_block - 1, window_block, 17),
            Step((self.window_slots, slots_w + slots_c + 1), (self.raw_ring, window_block + chunk),
                 (sizes["codes"], self.token_slots * self.code_row),
                 (sizes["stats"], Mux(self.token, self.token_slots * 8 * kv, 0)),
                 (sizes["sink_codes"], self.sink_slots * sink_block), (sizes["sink_stats"], self.sink_slots * 8 * width),
                 (sizes["sink_raw"], sinks * 4 * width)),
            Step((sizes["sink_codes"], sizes["sink_codes"] * self.code_row),
                 (sizes["window_codes"], self.window_slots * window_block),
                 (sizes["window_stats"], self.window_slots * 8 * width), (sizes["window_raw"], self.raw_ring * 4 * width),
                 (o["codes"], 0), (o["stats"], align64(sizes["codes"])), (o["sink_codes"], 0)),
            Step((sizes["window_codes"], sizes["window_codes"] * self.code_row)),
        ]
        chain = self.SECTIONS
        for before, after in zip(chain, chain[1:]):
            self.program.append(Step((o[after], align64(o[before] + sizes[before]))))
        self.program.append(Step((self.end, Mux(self.channel, align64(o["window_raw"] + sizes["window_raw"]),
                                                align64(o["stats"] + sizes["stats"])))))
