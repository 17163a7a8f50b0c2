"""The whole engine (rtl/engine/engine.py) run as XRT runs it, against the emulator.

A hand-built program on a 2-port, 64-bit engine: LOAD (plain, striped, BUF_AT_START with
block_shift/end_ceil, start_src HISTORY), LOAD_ROWS (striped gather by token ids), ADD, STORE
(striped, unaligned, BUF_AT_START from HISTORY), END, with dependency tokens between the units;
three runs (two prefill chunks, one decode) must leave every pseudo-channel byte for byte as the
emulator does. A second program checks the error statuses: each bad routine stops the engine
with the error code and the instruction the compiler's decoder or the emulator names.
"""

from __future__ import annotations

import random

import pytest

from llmfab.compiler.isa import Buffer, Flag, Instruction, IsaError, Opcode, RowSource, StartSource, decode
from llmfab.rtl.engine.engine import Engine
from llmfab.rtl.engine.geometry import EngineGeometry
from llmfab.rtl.engine.issue import ErrorCode
from llmfab.rtl.engine.seq_elementwise import ElementwiseSequencer
from llmfab.rtl.sim_runner import missing_tool, simulator_params
from llmfab.tests.rtl.engine.engine_harness import Run, assert_same_hbm, emulate, run_engine
from llmfab.tests.rtl.engine.programs import region, tiny_hardware, write_program

ACT, WGT, KV = int(Buffer.ACT), int(Buffer.WGT), int(Buffer.KV)
TOKENS, CONTEXT = int(RowSource.TOKENS), int(RowSource.CONTEXT)
IMAGE, USED = 1280, 2048
COLS = 6  # ACT32 elements per row of the ADD operands
ROW = 4 * COLS


def transfer_program() -> tuple[list[Instruction], dict]:
    L, S = Opcode.LOAD, Opcode.STORE
    striped = int(Flag.STRIPED)
    at_start = int(Flag.BUF_AT_START)
    prefill = [
        Instruction(L, rows_src=TOKENS, row_bytes=4, pc=0, hbm_offset=0, hbm_stride=4, buf=ACT, buf_addr=8,
                    buf_stride=4),  # token ids, one 4-byte row each
        Instruction(Opcode.LOAD_ROWS, rows_src=TOKENS, flags=striped, sub=2, pc=0, hbm_offset=67, hbm_stride=32,
                    row_bytes=24, buf=WGT, buf_addr=100, buf_stride=27, ids_buf=ACT, ids_addr=8),
        Instruction(L, rows_src=CONTEXT, flags=at_start, block_shift=1, end_ceil=1, pc=1, hbm_offset=900,
                    hbm_stride=20, row_bytes=18, buf=KV, buf_addr=0, buf_stride=20),
        Instruction(L, rows_src=TOKENS, flags=striped, sub=2, pc=0, hbm_offset=403, hbm_stride=40, row_bytes=ROW,
                    buf=ACT, buf_addr=1000, buf_stride=ROW),
        Instruction(L, rows_src=TOKENS, pc=1, hbm_offset=601, hbm_stride=29, row_bytes=ROW, buf=ACT, buf_addr=2002,
                    buf_stride=ROW, push_next=1),
        Instruction(Opcode.ADD, pop_prev=1, push_next=1, rows_src=TOKENS, cols=COLS, src0_buf=ACT, src0_addr=1000,
                    src1_buf=ACT, src1_addr=2002, dst_buf=ACT, dst_addr=3001),
        Instruction(S, pop_prev=1, rows_src=TOKENS, flags=striped, sub=2, pc=0, hbm_offset=1301, hbm_stride=40,
                    row_bytes=ROW, buf=ACT, buf_addr=3001, buf_stride=ROW),
        Instruction(S, rows_src=TOKENS, pc=1, hbm_offset=1500, hbm_stride=24, row_bytes=24, buf=WGT, buf_addr=100,
                    buf_stride=27),
        Instruction(S, rows_src=CONTEXT, start_src=int(StartSource.HISTORY), flags=at_start, block_shift=1,
                    end_ceil=1, pc=0, hbm_offset=1700, hbm_stride=20, row_bytes=18, buf=KV, buf_addr=0, buf_stride=20,
                    push_prev=1),
        Instruction(Opcode.END, pop_next=1),
    ]
    decode_routine = [
        Instruction(L, rows_src=CONTEXT, start_src=int(StartSource.HISTORY), pc=1, hbm_offset=601, hbm_stride=29,
                    row_bytes=ROW, buf=ACT, buf_addr=2002, buf_stride=ROW, push_next=1),
        Instruction(Opcode.ADD, pop_prev=1, push_next=1, rows_src=TOKENS, cols=COLS, src0_buf=ACT, src0_addr=1000,
                    src1_buf=ACT, src1_addr=2002, dst_buf=ACT, dst_addr=3001),
        Instruction(S, pop_prev=1, rows_src=CONTEXT, start_src=int(StartSource.HISTORY), flags=striped | at_start,
                    sub=2, pc=0, hbm_offset=1301, hbm_stride=40, row_bytes=ROW, buf=ACT, buf_addr=3001 - 5 * ROW,
                    buf_stride=ROW, push_prev=1),
        Instruction(Opcode.END, pop_next=1),
    ]
    routines = {"prefill": (0, len(prefill)), "decode": (len(prefill), len(decode_routine))}
    return prefill + decode_routine, routines


def build(folder, instructions, routines):
    rng = random.Random(4)
    hw = tiny_hardware()
    images = {pc: rng.randbytes(IMAGE) for pc in range(2)}
    return write_program(folder, hw, instructions, routines, images, {0: USED, 1: USED},
                         input_ids=region(0, 0, 4, 4, 4), logits=region(0, 1301, 8, ROW, 40, ports=2, kind="output"))


def small_engine(hw) -> Engine:
    g = EngineGeometry.from_config(hw)
    return Engine(g, {Opcode.ADD: ElementwiseSequencer(g, Opcode.ADD)}, trace=True)


RUNS = [Run("prefill", 3, 0, (5, 2, 9)), Run("prefill", 2, 3, (15, 0)), Run("decode", 1, 5, (7,))]


@pytest.mark.parametrize("simulator", simulator_params())
def test_engine_runs_transfers_and_add_like_the_emulator(simulator, tmp_path):
    program = build(tmp_path / "program", *transfer_program())
    result = run_engine(program, RUNS, simulator, tmp_path / "run", engine=small_engine(program.hardware))
    assert_same_hbm(program, result, emulate(program, RUNS))
    prefill = result.cycles_by_opcode(0)
    assert {k: v["count"] for k, v in prefill.items()} == {"LOAD": 4, "LOAD_ROWS": 1, "ADD": 1, "STORE": 3, "END": 1}
    for run in result.runs:
        status = run.status
        assert status["retired"] == len(run.trace) and status["status"] == 0, (status, run.trace)
        assert 0 < status["load_busy"] < run.cycles and 0 < status["store_busy"] < run.cycles
        assert abs(status["cycles_lo"] - run.cycles) <= 4, (status, run.cycles)
    print({i: result.cycles_by_opcode(i) for i in range(len(RUNS))}, [r.cycles for r in result.runs])


def error_routines() -> tuple[list[Instruction], dict, dict]:
    """Routines that each stop the engine: name -> (entry, count), and name -> (ErrorCode, address)."""
    L = Opcode.LOAD
    ok_load = Instruction(L, rows=1, row_bytes=8, pc=0, hbm_offset=0, hbm_stride=8, buf=ACT, buf_addr=0, buf_stride=8)
    words, routines, expected = [], {}, {}

    def add(name, body, error, at):
        routines[name] = (len(words), len(body))
        expected[name] = (error, len(words) + at)
        words.extend(body)

    add("unknown_opcode", [ok_load, 0x05, Instruction(Opcode.END)], ErrorCode.UNKNOWN_OPCODE, 1)
    add("reserved_bit", [ok_load, (ok_load, 255), Instruction(Opcode.END)], ErrorCode.RESERVED_BITS, 1)
    add("token_bits", [(ok_load, 8), Instruction(Opcode.END)], ErrorCode.TOKEN_BITS, 0)
    add("bad_source", [(ok_load, 22), Instruction(Opcode.END)], ErrorCode.BAD_SOURCE, 0)
    add("tokens_left", [ok_load.replace(push_next=1), Instruction(Opcode.END)], ErrorCode.TOKENS_LEFT, 1)
    add("deadlock", [ok_load, Instruction(Opcode.ADD, pop_prev=1, rows=1, cols=2, src0_buf=ACT, src1_buf=ACT,
                                          dst_buf=ACT), Instruction(Opcode.END)], ErrorCode.DEADLOCK, 1)
    add("no_end", [ok_load, ok_load], ErrorCode.NO_END, 2)
    add("no_sequencer", [Instruction(Opcode.RMSNORM, rows=1, cols=2, src0_buf=ACT, src1_buf=ACT, dst_buf=ACT),
                         Instruction(Opcode.END)], ErrorCode.NO_SEQUENCER, 0)
    add("buffer_range", [ok_load.replace(buf_addr=4090), Instruction(Opcode.END)], ErrorCode.BUFFER_RANGE, 0)
    add("port_range", [ok_load, ok_load.replace(pc=2), Instruction(Opcode.END)], ErrorCode.PORT_RANGE, 1)
    add("good", [ok_load, ok_load.replace(rows=2, buf_addr=16, hbm_offset=32), Instruction(Opcode.END)],
        ErrorCode.NONE, 0)
    return words, routines, expected


def encode_word(word) -> bytes:
    """An Instruction, a bare opcode byte, or (Instruction, bit): the instruction with that bit flipped."""
    if isinstance(word, int):
        return bytes([word]) + bytes(31)
    if isinstance(word, tuple):
        inst, bit = word
        value = int.from_bytes(inst.encode(), "little") ^ (1 << bit)
        return value.to_bytes(32, "little")
    return word.encode()


@pytest.mark.parametrize("simulator", simulator_params())
def test_engine_reports_errors_with_the_instruction(simulator, tmp_path):
    words, routines, expected = error_routines()
    raw = [encode_word(w) for w in words]
    for name, (code, at) in expected.items():  # the decoder errors are the compiler's
        if code in (ErrorCode.UNKNOWN_OPCODE, ErrorCode.RESERVED_BITS, ErrorCode.TOKEN_BITS, ErrorCode.BAD_SOURCE):
            with pytest.raises(IsaError, match=f"instruction {at}"):
                decode(raw[at], at)
    program = build(tmp_path / "program", [], routines)
    (program.folder / "instructions.bin").write_bytes(b"".join(raw))  # not loaded again: checksums are not re-read
    runs = [Run(name, 1, 0) for name in expected]
    result = run_engine(program, runs, simulator, tmp_path / "run", engine=small_engine(program.hardware))
    for (name, (code, at)), run in zip(expected.items(), result.runs):
        got = (run.status["error_code"], run.status["error_address"] if code else 0)
        assert got == (int(code), at if code else 0), f"{name}: status {run.status}, expected {code.name} at {at}"
        assert run.status["status"] == (2 if code else 0)
    good = result.runs[-1].hbm[0]
    assert result.runs[-1].status["retired"] == 3 and good  # the engine runs normally after errors


@pytest.mark.sim
@pytest.mark.skipif(missing_tool("icarus") is not None, reason=str(missing_tool("icarus")))
def test_engine_as_the_xrt_kernel_top(tmp_path):
    """The same program through the XRT-named top (ap_clk, ap_rst_n, m_axi_hbm00_*), without trace ports."""
    program = build(tmp_path / "program", *transfer_program())
    g = EngineGeometry.from_config(program.hardware)
    engine = Engine(g, {Opcode.ADD: ElementwiseSequencer(g, Opcode.ADD)})
    result = run_engine(program, RUNS[:2], "icarus", tmp_path / "run", engine=engine, kernel=True,
                        toplevel="llmfab_engine", stall=0.2)
    assert_same_hbm(program, result, emulate(program, RUNS[:2]))
