"""Packed KV storage at 4 and 8 bits: round-trip bounds, byte counts, per-channel staging, bad input."""

import pytest
import torch

from llmfab.errors import InputError
from llmfab.quant.kv4 import (
    Kv4Cache,
    Kv4Config,
    KvGranularity,
    dequantize_kv4,
    quantize_kv4,
)

PER_TOKEN = Kv4Config(KvGranularity.PER_TOKEN)
PER_CHANNEL = Kv4Config(KvGranularity.PER_CHANNEL, block_tokens=8)


def _kv(seed: int, tokens: int, batch: int = 2, heads: int = 3, head_dim: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    channel_scale = torch.exp(torch.randn(1, heads, 1, head_dim, generator=gen))
    return torch.randn(batch, heads, tokens, head_dim, generator=gen) * channel_scale + 0.5


def _assert_within_half_step(restored, values, scales):
    bound = 0.5 * scales.float() * (1 + 1e-5) + 1e-6
    assert ((restored - values).abs() <= bound).all()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("granularity", list(KvGranularity))
def test_round_trip_error_is_at_most_half_a_scale(granularity, bits):
    values = _kv(0, tokens=10)
    block = quantize_kv4(values, granularity, bits)
    assert block.codes.dtype == torch.uint8 and block.codes.shape == (2, 3, 10, 16 * bits // 8)
    assert block.scales.dtype == torch.float16 and block.offsets.dtype == torch.float16
    expected = (2, 3, 10, 1) if granularity is KvGranularity.PER_TOKEN else (2, 3, 1, 16)
    assert block.scales.shape == expected
    span = values.amax(-1 if granularity is KvGranularity.PER_TOKEN else -2, keepdim=True) - \
        values.amin(-1 if granularity is KvGranularity.PER_TOKEN else -2, keepdim=True)
    assert (block.scales.float() <= span / ((1 << bits) - 1) * (1 + 2**-9) + 1e-6).all()  # the full code range
    _assert_within_half_step(dequantize_kv4(block), values, block.scales)


def test_8_bit_codes_are_one_byte_per_value_and_finer_than_4_bit():
    values = _kv(6, tokens=12)
    block = quantize_kv4(values, KvGranularity.PER_TOKEN, bits=8)
    codes = torch.round((values - block.offsets.float()) / block.scales.float()).to(torch.uint8)
    assert torch.equal(block.codes, codes)  # unpacked: channel i in byte i
    errors = {bits: (dequantize_kv4(quantize_kv4(values, KvGranularity.PER_TOKEN, bits)) - values).abs().mean()
              for bits in (4, 8)}
    assert errors[8] < errors[4] / 12  # 255 against 15 steps


def test_constant_vector_round_trips_exactly():
    values = torch.full((1, 1, 2, 4), 0.75)
    assert torch.equal(dequantize_kv4(quantize_kv4(values, KvGranularity.PER_TOKEN)), values)


def test_per_token_cache_appends_reads_and_counts_bytes():
    cache = Kv4Cache(batch=2, kv_heads=3, head_dim=16, config=PER_TOKEN)
    chunks = [_kv(1, 5), _kv(2, 1), _kv(3, 7)]
    for chunk in chunks:
        cache.append(chunk)
    assert cache.num_tokens == 13
    assert cache.bytes_per_token() == 3 * (16 / 2 + 2 + 2)
    assert cache.stored_bytes() == 2 * 13 * cache.bytes_per_token()
    restored = cache.read()
    values = torch.cat(chunks, dim=2)
    assert restored.shape == values.shape
    per_token_bound = (values.amax(-1, keepdim=True) - values.amin(-1, keepdim=True)) / 15
    assert ((restored - values).abs() <= 0.5 * per_token_bound * 1.01 + 1e-6).all()


def test_per_channel_cache_quantizes_full_blocks_and_stages_the_rest():
    cache = Kv4Cache(batch=2, kv_heads=3, head_dim=16, config=PER_CHANNEL)
    values = _kv(4, tokens=29)
    for start in range(0, 29, 6):  # uneven appends that straddle block boundaries
        cache.append(values[:, :, start : start + 6])
    assert cache.num_tokens == 29
    assert cache.bytes_per_token() == 3 * (16 / 2 + 2 * 2 * 16 / 8)
    staged = 29 - 24
    assert cache.stored_bytes() == 2 * 24 * cache.bytes_per_token() + 2 * 3 * staged * 16 * 2
    restored = cache.read()
    for block in range(3):
        chunk = values[:, :, 8 * block : 8 * block + 8].half().float()  # staged as float16
        scales = quantize_kv4(chunk, KvGranularity.PER_CHANNEL).scales
        _assert_within_half_step(restored[:, :, 8 * block : 8 * block + 8], chunk, scales)
    assert torch.equal(restored[:, :, 24:], values[:, :, 24:].half().float())


def test_per_channel_wins_when_keys_have_outlier_channels():
    values = _kv(5, tokens=32, head_dim=32)
    values[..., 3] *= 20.0  # one outlier channel, as in LLM keys
    errors = {}
    for granularity in KvGranularity:
        restored = dequantize_kv4(quantize_kv4(values, granularity))
        errors[granularity] = float((restored - values).pow(2).mean())
    assert errors[KvGranularity.PER_CHANNEL] < errors[KvGranularity.PER_TOKEN]


def test_8_bit_caches_count_one_code_byte_per_channel():
    per_token = Kv4Cache(batch=1, kv_heads=3, head_dim=16, config=Kv4Config(KvGranularity.PER_TOKEN, bits=8))
    per_channel = Kv4Cache(batch=1, kv_heads=3, head_dim=16, config=Kv4Config(KvGranularity.PER_CHANNEL, 16, bits=8))
    values = _kv(7, tokens=16, batch=1)
    for cache in (per_token, per_channel):
        cache.append(values)
        assert cache.stored_bytes() == 16 * cache.bytes_per_token()  # one full per-channel block
        stored = values.half().float() if cache is per_channel else values  # blocks are staged in float16
        block = quantize_kv4(stored, cache.config.granularity, bits=8)
        assert torch.equal(cache.read(), dequantize_kv4(block))
        _assert_within_half_step(cache.read(), stored, block.scales)
    assert per_token.bytes_per_token() == 3 * (16 + 2 + 2)
    assert per_channel.bytes_per_token() == 3 * (16 + 2 * 2 * 16 / 16)
    assert Kv4Cache(batch=1, kv_heads=1, head_dim=5, config=Kv4Config(bits=8)).bytes_per_token() == 5 + 4


@pytest.mark.parametrize("bits", [3, 16, True])
def test_unsupported_bits_name_the_supported_ones(bits):
    with pytest.raises(InputError, match="4 or 8 bits"):
        Kv4Config(bits=bits)
    with pytest.raises(InputError, match="4 or 8 bits"):
        quantize_kv4(_kv(0, tokens=2), KvGranularity.PER_TOKEN, bits)


def test_odd_head_dim_and_wrong_append_shape_are_rejected():
    with pytest.raises(InputError, match="odd.*8-bit"):
        Kv4Cache(batch=1, kv_heads=1, head_dim=5)
    with pytest.raises(InputError, match="odd"):
        quantize_kv4(torch.zeros(1, 1, 2, 5), KvGranularity.PER_TOKEN)
    cache = Kv4Cache(batch=1, kv_heads=2, head_dim=8)
    with pytest.raises(InputError, match="kv_heads"):
        cache.append(torch.zeros(1, 3, 1, 8))
    with pytest.raises(InputError, match="float16 range"):
        cache.append(torch.full((1, 2, 1, 8), 1e6))
