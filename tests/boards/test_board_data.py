"""Shipped board files load, carry citations, and key U280 figures match the data sheets."""

import math

import pytest

from llmfab.boards.board import Board, available_boards, load_board


def test_shipped_boards_are_listed():
    assert {"u280", "u55c", "vhk158"} <= set(available_boards())


@pytest.mark.parametrize("name", ["u280", "u55c", "vhk158"])
def test_each_board_loads_and_round_trips(name):
    board = load_board(name)
    assert board.name == name
    assert Board.from_dict(board.to_dict()) == board
    hash(board)  # frozen and hashable, usable as a cache key


@pytest.mark.parametrize("name", ["u280", "u55c", "vhk158"])
def test_hbm_bandwidth_is_consistent(name):
    hbm = load_board(name).hbm
    assert math.isclose(hbm.pseudo_channels * hbm.pc_bandwidth_gbs, hbm.total_bandwidth_gbs, rel_tol=0.02)


def test_u280_key_figures():
    board = load_board("U280")  # case-insensitive
    assert board.device.part == "xcu280-fsvh2892-2L-e"
    assert board.device.platform == "xilinx_u280_gen3x16_xdma_1_202211_1"
    assert board.hbm.pseudo_channels == 32
    assert board.hbm.total_capacity_bytes == 8 * 2**30
    assert math.isclose(board.hbm.pc_bandwidth_gbs, 14.375)
    assert round(board.hbm.total_bandwidth_gbs) == 460
    assert board.hbm.attached_slr == 0
    fabric = board.fabric.resources
    assert (fabric.dsps, fabric.bram36, fabric.uram) == (9024, 2016, 960)
    assert round(fabric.luts / 1e3) == 1304
    assert board.slrs.count == 3
    assert board.ddr is not None and board.ddr.total_capacity_bytes == 32 * 2**30
    assert board.power.max_w == 225


def test_u280_bank_names_follow_vpp_convention():
    banks = load_board("u280").memory_banks()
    assert banks[0] == "HBM[0]" and banks[31] == "HBM[31]"
    assert "DDR[0]" in banks and "DDR[1]" in banks and "PLRAM[0]" in banks


def test_u55c_has_more_hbm_and_no_ddr():
    board = load_board("u55c")
    assert board.hbm.total_capacity_bytes == 16 * 2**30
    assert board.ddr is None


def test_every_figure_is_cited_and_estimates_are_marked():
    board = load_board("u280")
    assert board.hbm.source("total_bandwidth_gbs").startswith("DS963")
    assert "slrs.per_slr" in board.estimated_figures()
    assert "fabric.dsps" not in board.estimated_figures()


def test_kernel_resources_subtract_the_shell():
    board = load_board("u280")
    assert board.kernel_resources.luts == board.fabric.resources.luts - board.platform_shell.resources.luts
