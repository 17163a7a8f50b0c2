import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.errors import InputError
from llmfab.quant.packing import (
    pack_2to4_index,
    pack_bits,
    packed_length,
    unpack_2to4_index,
    unpack_bits,
)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    lead=st.lists(st.integers(0, 3), max_size=2),
    count=st.integers(0, 37),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_is_exact(bits, lead, count, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 1 << bits, (*lead, count), generator=gen, dtype=torch.uint8)
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*lead, packed_length(count, bits))
    assert torch.equal(unpack_bits(packed, bits, count), values)


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_unused_tail_bits_are_zero(count, seed):
    values = torch.randint(0, 8, (count,), generator=torch.Generator().manual_seed(seed))
    packed = pack_bits(values, 3)
    used = count * 3 - (packed.numel() - 1) * 8
    assert int(packed[-1]) >> used == 0


def test_two_bit_layout_puts_element_i_at_bits_2i():
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00_11_10_01]


def test_four_bit_layout_puts_first_element_in_low_nibble():
    assert pack_bits(torch.tensor([0xA, 0x5, 0x1]), 4).tolist() == [0x5A, 0x01]


def test_three_bit_layout_is_a_little_endian_bitstream():
    # stream bits (lsb first): 1->100, 2->010, 3->110, 4->001, 5->101, 6->011, 7->111, 0->000
    packed = pack_bits(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3)
    stream = "100" "010" "110" "001" "101" "011" "111" "000"
    expected = [int(stream[8 * k : 8 * k + 8][::-1], 2) for k in range(3)]
    assert packed.tolist() == expected


def test_eight_bit_packing_is_identity():
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(pack_bits(values, 8), values)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_out_of_range_value_is_rejected(bits):
    with pytest.raises(InputError, match=f"{bits}-bit range"):
        pack_bits(torch.tensor([0, 1 << bits]), bits)


def test_negative_value_is_rejected():
    with pytest.raises(InputError, match="outside"):
        pack_bits(torch.tensor([-1, 0], dtype=torch.int8), 4)


def test_float_values_are_rejected():
    with pytest.raises(InputError, match="integer tensor"):
        pack_bits(torch.tensor([1.0]), 4)


def test_unsupported_width_is_rejected():
    with pytest.raises(InputError, match="not supported"):
        pack_bits(torch.tensor([1]), 5)


def test_unpack_with_wrong_count_is_rejected():
    packed = pack_bits(torch.zeros(10, dtype=torch.uint8), 3)
    with pytest.raises(InputError, match="need"):
        unpack_bits(packed, 3, 20)


def test_2to4_index_round_trip_and_density():
    codes = torch.randint(0, 6, (5, 24), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    packed = pack_2to4_index(codes)
    assert packed.shape == (5, 9)  # 24 groups * 3 bits = 72 bits = 9 bytes, 0.75 bit per weight
    assert torch.equal(unpack_2to4_index(packed, 24), codes)


def test_2to4_index_rejects_codes_that_name_no_pattern():
    with pytest.raises(InputError, match="0..5"):
        pack_2to4_index(torch.tensor([[6]], dtype=torch.uint8))
    with pytest.raises(InputError, match="corrupt"):
        unpack_2to4_index(pack_bits(torch.tensor([[7]]), 3), 1)
