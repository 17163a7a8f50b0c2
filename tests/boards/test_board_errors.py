"""Bad board files and names give errors that name the file, the field and the fix."""

import copy

import pytest
import yaml

from llmfab.boards.board import BoardDataError, load_board, load_board_file
from llmfab.errors import InputError


@pytest.fixture
def u280_data():
    return copy.deepcopy(load_board("u280").to_dict())


def write(tmp_path, data, name="u280.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_board_data_error_is_an_input_error():
    assert issubclass(BoardDataError, InputError)


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(BoardDataError, match=r"unknown board 'u999'.*known boards: .*u280.*u55c"):
        load_board("u999")


def test_missing_field_names_file_and_field(tmp_path, u280_data):
    del u280_data["hbm"]["pseudo_channels"]
    path = write(tmp_path, u280_data)
    with pytest.raises(BoardDataError) as info:
        load_board_file(path)
    assert str(path) in str(info.value)
    assert "'hbm.pseudo_channels': missing" in str(info.value)


def test_negative_value_is_rejected(tmp_path, u280_data):
    u280_data["fabric"]["dsps"] = -9024
    with pytest.raises(BoardDataError, match=r"'fabric.dsps': expected a positive value, got -9024"):
        load_board_file(write(tmp_path, u280_data))


def test_wrong_type_is_rejected(tmp_path, u280_data):
    u280_data["hbm"]["pc_bandwidth_gbs"] = "fast"
    with pytest.raises(BoardDataError, match=r"'hbm.pc_bandwidth_gbs': expected a number"):
        load_board_file(write(tmp_path, u280_data))


def test_uncited_figure_is_rejected(tmp_path, u280_data):
    del u280_data["hbm"]["sources"]["stacks"]
    with pytest.raises(BoardDataError, match=r"'hbm.stacks': has no entry in this section's 'sources'"):
        load_board_file(write(tmp_path, u280_data))


def test_unknown_field_is_rejected(tmp_path, u280_data):
    u280_data["hbm"]["pseudo_chanels"] = 32
    with pytest.raises(BoardDataError, match=r"'hbm.pseudo_chanels': unknown field"):
        load_board_file(write(tmp_path, u280_data))


def test_inconsistent_bandwidth_is_rejected(tmp_path, u280_data):
    u280_data["hbm"]["total_bandwidth_gbs"] = 920.0
    with pytest.raises(BoardDataError, match=r"'hbm.total_bandwidth_gbs': 32 x 14.375"):
        load_board_file(write(tmp_path, u280_data))


def test_slr_out_of_range_is_rejected(tmp_path, u280_data):
    u280_data["ddr"]["bank_slrs"] = [0, 3]
    with pytest.raises(BoardDataError, match=r"'ddr.bank_slrs'"):
        load_board_file(write(tmp_path, u280_data))


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hbm: [unclosed", encoding="utf-8")
    with pytest.raises(BoardDataError, match="not valid YAML"):
        load_board_file(bad)
    with pytest.raises(BoardDataError, match="cannot read board file"):
        load_board_file(tmp_path / "absent.yaml")


def test_json_board_file_loads(tmp_path, u280_data):
    import json

    path = tmp_path / "u280.json"
    path.write_text(json.dumps(u280_data), encoding="utf-8")
    assert load_board_file(path) == load_board("u280")
