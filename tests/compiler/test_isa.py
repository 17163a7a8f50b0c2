"""Instruction words: field layouts, encode/decode round trips, and the errors of bad words."""

from __future__ import annotations

import random

import pytest

from llmfab.compiler.isa import (
    COMPUTE,
    MEMORY,
    WORD_BYTES,
    Flag,
    GemmMode,
    Instruction,
    IsaError,
    Opcode,
    Registers,
    RingPart,
    RowSource,
    StartSource,
    decode,
    decode_program,
    encode_program,
    layout,
    row_range,
    transfer_runs,
)


@pytest.mark.parametrize("fields", [MEMORY, COMPUTE], ids=["memory", "compute"])
def test_layouts_tile_the_word_without_overlap(fields):
    taken = set()
    for f in fields:
        bits = set(range(f.lsb, f.lsb + f.width))
        assert not bits & taken, f.name
        taken |= bits
    assert max(taken) < 8 * WORD_BYTES


def random_instruction(rng: random.Random, opcode: Opcode) -> Instruction:
    values = {}
    for f in layout(opcode):
        if f.name in ("opcode",):
            continue
        values[f.name] = rng.randrange(1 << f.width)
    if opcode in (Opcode.LOAD, Opcode.LOAD_ROWS):
        values["pop_prev"] = values["push_prev"] = 0
    if opcode is Opcode.STORE:
        values["pop_next"] = values["push_next"] = 0
    values["rows_src"] %= 4
    values["start_src"] = values["start_src"] % 3 if "start_src" in values else 0
    if "ring_part" in values:  # the ring fields only with flag RING, which needs a register end and a mirror
        if opcode is not Opcode.LOAD_ROWS and values["flags"] & Flag.RING:
            values["flags"] |= Flag.BUF_AT_START
            values["rows_src"] = values["rows_src"] or RowSource.CONTEXT
            values["ring_part"] %= 3
        else:
            values["flags"] &= ~Flag.RING
            values.update(ring_part=0, align_shift=0, split_shift=0)
    return Instruction(opcode, **values)


@pytest.mark.parametrize("opcode", list(Opcode), ids=lambda o: o.name)
def test_random_words_round_trip(opcode):
    rng = random.Random(int(opcode))
    for _ in range(20):
        inst = random_instruction(rng, opcode)
        word = inst.encode()
        assert len(word) == WORD_BYTES
        assert decode(word) == inst


def test_documented_bit_positions():
    """A few fields checked against docs/isa.md by hand: opcode in byte 0, tokens in bits 8..11,
    the HBM pseudo-channel in byte 8 of a MEMORY word."""
    word = Instruction(Opcode.LOAD, pop_next=1, push_next=1, pc=31, rows=3).encode()
    assert word[0] == Opcode.LOAD
    assert word[1] == 0b1010
    assert word[8] == 31
    assert int.from_bytes(word, "little") >> 104 & 0xFFFF == 3


def test_field_overflow_is_rejected():
    with pytest.raises(IsaError, match="rows = 65536 does not fit in 16 bits"):
        Instruction(Opcode.GEMM, rows=1 << 16).encode()


def test_field_outside_layout_is_rejected():
    with pytest.raises(IsaError, match="field pc is not part of its word layout"):
        Instruction(Opcode.GEMM, pc=3).encode()


def test_unknown_opcode_names_its_address():
    program = encode_program([Instruction(Opcode.LOAD), Instruction(Opcode.END)])
    broken = program[:WORD_BYTES] + bytes([0x7E]) + program[WORD_BYTES + 1:]
    with pytest.raises(IsaError, match=r"instruction 1 \(byte offset 32\): unknown opcode 0x7e"):
        decode_program(broken)


def test_undefined_row_sources_are_rejected():
    with pytest.raises(IsaError, match="instruction 4 \\(ADD\\): row source 9"):
        decode(Instruction(Opcode.ADD, rows_src=9).encode(), 4)


def test_reserved_bits_and_torn_stream_are_rejected():
    word = bytearray(Instruction(Opcode.STORE).encode())
    word[31] |= 0x80  # bit 255 is reserved in the MEMORY layout
    with pytest.raises(IsaError, match="instruction 0 \\(STORE\\): reserved bits"):
        decode(bytes(word))
    with pytest.raises(IsaError, match="not a whole number"):
        decode_program(bytes(33))


@pytest.mark.parametrize(("opcode", "field"), [(Opcode.LOAD, "pop_prev"), (Opcode.STORE, "push_next")])
def test_tokens_toward_a_missing_neighbour_are_rejected(opcode, field):
    with pytest.raises(IsaError, match="no (previous|next) unit"):
        Instruction(opcode, **{field: 1}).encode()


def test_row_ranges_follow_the_registers():
    regs = Registers(n_tokens=5, position=30)
    assert row_range(Instruction(Opcode.GEMM, rows_src=RowSource.TOKENS), regs) == (0, 5)
    new_rows = Instruction(Opcode.STORE, rows_src=RowSource.CONTEXT, start_src=StartSource.HISTORY,
                           flags=Flag.BUF_AT_START)
    assert row_range(new_rows, regs) == (30, 5)
    blocks = new_rows.replace(block_shift=5, end_ceil=1)  # 32-token blocks 0..1 are touched by 30..34
    assert row_range(blocks, regs) == (0, 2)
    history = Instruction(Opcode.LOAD, rows_src=RowSource.HISTORY)
    assert row_range(history, regs) == (0, 30)
    assert row_range(Instruction(Opcode.LOAD, rows=7), regs) == (0, 7)
    assert GemmMode.GEMM_SPARSE.sparse and not GemmMode.GEMV.sparse


def ring(opcode=Opcode.STORE, **fields) -> Instruction:
    base = dict(flags=Flag.RING | Flag.BUF_AT_START, rows_src=RowSource.CONTEXT, start_src=StartSource.HISTORY)
    return Instruction(opcode, **{**base, **fields})


def test_ring_transfers_follow_the_ring_slots_of_the_positions():
    """docs/isa.md, flag RING, by hand: S = 4 sinks, W = 8, a window ring of W + C = 11 token slots."""
    regs = Registers(n_tokens=5, position=13, sinks=4, window=8, chunk=3)
    window = ring(ring_part=RingPart.WINDOW, rows=11)
    # positions 13..17 are window tokens 9..13 of the ring: slots 9, 10, then 0, 1, 2
    assert transfer_runs(window, regs) == ((9, 2), (0, 3))
    assert row_range(window, regs) == (9, 5)
    # each slot cut into 2^3 rows (one slot streams from 8 pseudo-channels)
    assert transfer_runs(window.replace(split_shift=3), regs) == ((72, 16), (0, 24))
    # the sink part: positions from 13 are past the sinks, nothing to store; from position 2 two sinks
    sinks = ring(ring_part=RingPart.SINKS)
    assert transfer_runs(sinks, regs) == ()
    assert transfer_runs(sinks, Registers(5, 2, 4, 8, 3)) == ((2, 2),)
    # LOAD of what query 13 still sees: window from max(13 - 8 + 1, 4) = 6 to 12, slots 2..8
    seen = ring(Opcode.LOAD, ring_part=RingPart.WINDOW, rows=11, start_src=StartSource.WINDOW,
                rows_src=RowSource.HISTORY)
    assert transfer_runs(seen, regs) == ((2, 7),)
    # blocks of 2^2 window tokens (block k = tokens 4 + 4k .. 7 + 4k): the LOAD brings the completed
    # blocks from the one holding token 6 (blocks 0, 1), the STORE the block positions 13..17 complete (2)
    blocks = dict(ring_part=RingPart.WINDOW, rows=5, block_shift=2)
    assert transfer_runs(seen.replace(**blocks), regs) == ((0, 2),)
    assert transfer_runs(window.replace(**blocks), regs) == ((2, 1),)
    # raw staging of the unfinished block: from position 13 rounded down to its block (12) to 12
    raw = seen.replace(start_src=StartSource.HISTORY, align_shift=2)
    assert transfer_runs(raw, regs) == ((8, 1),)


def test_ring_transfer_longer_than_its_ring_is_an_error():
    with pytest.raises(IsaError, match="12 slots at positions from 4 do not fit its ring of 11 slots"):
        transfer_runs(ring(ring_part=RingPart.WINDOW, rows=11), Registers(12, 4, 4, 8, 3))


@pytest.mark.parametrize(("fields", "message"), [
    (dict(flags=Flag.RING, rows_src=RowSource.CONTEXT), "BUF_AT_START must be set"),
    (dict(flags=Flag.RING | Flag.BUF_AT_START), "its end must come from a register"),
    (dict(flags=Flag.RING | Flag.BUF_AT_START, rows_src=RowSource.CONTEXT, ring_part=3), "ring_part 3 does not exist"),
    (dict(split_shift=2), "split_shift are only defined with flag RING"),
])
def test_inconsistent_ring_fields_are_rejected(fields, message):
    word = bytearray(32)
    inst = Instruction(Opcode.STORE, **fields)
    with pytest.raises(IsaError, match=message):
        inst.encode()
    values = 0  # the same word built by hand reaches the decoder's check too
    for f in layout(Opcode.STORE):
        values |= int(getattr(inst, f.name)) << f.lsb
    word[:] = values.to_bytes(32, "little")
    with pytest.raises(IsaError, match=f"instruction 5 .*{message}"):
        decode(bytes(word), 5)
