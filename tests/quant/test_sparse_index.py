import itertools

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.sparse_index import (
    PATTERNS,
    compress_2to4,
    decode_2to4_mask,
    decompress_2to4,
    encode_2to4_mask,
)


def _all_pattern_mask() -> torch.Tensor:
    """[1, 24]: the six patterns side by side."""
    return torch.tensor([[j in pair for pair in PATTERNS for j in range(4)]])


def test_six_patterns_are_all_ways_to_keep_two_of_four():
    assert sorted(PATTERNS) == list(itertools.combinations(range(4), 2))


def test_encode_decode_round_trip_over_all_patterns():
    mask = _all_pattern_mask()
    codes = encode_2to4_mask(mask)
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert torch.equal(decode_2to4_mask(codes), mask)


def test_round_trip_on_random_masks():
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 6, (7, 16), generator=gen, dtype=torch.uint8)
    mask = decode_2to4_mask(codes)
    assert mask.shape == (7, 64)
    assert torch.equal(encode_2to4_mask(mask), codes)


def test_compress_keeps_values_in_column_order_and_decompress_restores():
    mask = _all_pattern_mask().repeat(2, 1)
    weight = torch.arange(48, dtype=torch.float32).reshape(2, 24) + 1
    kept = compress_2to4(weight, mask)
    assert kept.shape == (2, 12)
    assert kept[0, :4].tolist() == [1.0, 2.0, 5.0, 7.0]  # pattern (0,1) then (0,2)
    dense = decompress_2to4(kept, mask)
    assert torch.equal(dense, torch.where(mask, weight, 0.0))


def test_mask_that_is_not_2to4_is_rejected_with_its_location():
    mask = _all_pattern_mask()
    mask[0, 5] = True  # group 1 now keeps three
    with pytest.raises(InputError, match="keeps 3 of the 4 columns 4..7 in row 0"):
        encode_2to4_mask(mask)


def test_in_features_not_multiple_of_four_is_rejected():
    with pytest.raises(InputError, match="multiple of 4"):
        encode_2to4_mask(torch.ones(2, 6, dtype=torch.bool))


def test_decode_rejects_invalid_codes():
    with pytest.raises(InputError, match="0..5"):
        decode_2to4_mask(torch.tensor([[6]], dtype=torch.uint8))


def test_decompress_rejects_wrong_value_shape():
    with pytest.raises(InputError, match="compress_2to4"):
        decompress_2to4(torch.zeros(1, 5), _all_pattern_mask())
