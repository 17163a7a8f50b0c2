"""Packed KV cache storage, 4 or 8 bits per value, with float16 scales and offsets.

A K or V tensor ``[batch, kv_heads, tokens, head_dim]`` is stored as ``bits``-bit codes q in
0..2^bits-1: 4-bit codes two per byte (even ``head_dim`` index in the low nibble), 8-bit codes one
per byte (see :mod:`llmfab.quant.packing`). A value is ``offset + scale * q``, asymmetric, with
``offset`` (the range minimum, rounded down) and ``scale`` (rounded up so the range maximum stays
representable) stored as float16. Hence the round-trip error of every stored value is at most
scale / 2. (The ``Kv4`` names date from when 4 bits was the only width; ``Kv4Config.bits`` picks it.)

Two granularities:

- PER_TOKEN: one (scale, offset) per token and head, over its ``head_dim`` values;
- PER_CHANNEL: one (scale, offset) per head and ``head_dim`` channel, over a block of
  ``block_tokens`` tokens. Tokens of an unfinished block wait in a float16 staging buffer and are
  quantized when the block fills (as KIVI does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from llmfab.errors import InputError
from llmfab.quant.packing import pack_bits, packed_length, unpack_bits

SUPPORTED_KV_CACHE_BITS = (4, 8)
_FP16_MAX = float(torch.finfo(torch.float16).max)
_FP16_TINY = float(torch.finfo(torch.float16).tiny)


class KvGranularity(enum.Enum):
    """Which values share one scale and offset."""

    PER_TOKEN = "per_token"
    PER_CHANNEL = "per_channel"


def check_kv_cache_bits(bits: int) -> None:
    """Raise InputError unless ``bits`` is a packed KV cache width (4 or 8)."""
    if isinstance(bits, bool) or bits not in SUPPORTED_KV_CACHE_BITS:
        raise InputError(
            f"KV cache bits {bits!r} are not supported; a packed KV cache stores "
            f"{' or '.join(map(str, SUPPORTED_KV_CACHE_BITS))} bits per value"
        )


@dataclass(frozen=True)
class Kv4Config:
    """Packed KV settings of one stream (keys or values): scale granularity, code width
    (``bits`` 4 or 8) and, for PER_CHANNEL only, the tokens per block."""

    granularity: KvGranularity = KvGranularity.PER_TOKEN
    block_tokens: int = 32
    bits: int = 4

    def __post_init__(self) -> None:
        """Reject a non-positive block length and unsupported code widths."""
        if self.block_tokens < 1:
            raise InputError(f"block_tokens {self.block_tokens} must be a positive token count, e.g. 32")
        check_kv_cache_bits(self.bits)


@dataclass(frozen=True, eq=False)
class Kv4Block:
    """Quantized tokens.

    codes: uint8 ``[batch, kv_heads, tokens, head_dim * bits / 8]`` (packed).
    scales, offsets: float16 ``[batch, kv_heads, tokens, 1]`` (per-token) or
    ``[batch, kv_heads, 1, head_dim]`` (per-channel).
    bits: code width, 4 or 8.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor
    bits: int

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales and offsets."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.offsets))


def quantize_kv4(values: torch.Tensor, granularity: KvGranularity, bits: int = 4) -> Kv4Block:
    """Quantize K or V values to packed ``bits``-bit codes.

    Args:
        values: float ``[batch, kv_heads, tokens, head_dim]``, |values| <= 65504; head_dim even
            for 4 bits.
        granularity: PER_TOKEN (statistics over head_dim) or PER_CHANNEL (over all given tokens).
        bits: 4 or 8.

    Returns:
        :class:`Kv4Block`.
    """
    check_kv_cache_bits(bits)
    _check_kv(values, "values", bits)
    max_code = (1 << bits) - 1
    x = values.float()
    reduce_dim = -1 if granularity is KvGranularity.PER_TOKEN else -2
    lo = x.amin(dim=reduce_dim, keepdim=True)
    hi = x.amax(dim=reduce_dim, keepdim=True)
    offset = lo.to(torch.float16)
    offset = torch.where(offset.float() > lo, torch.nextafter(offset, offset.new_tensor(-torch.inf)), offset)
    scale = ((hi - offset.float()) / max_code).clamp(min=_FP16_TINY).to(torch.float16)
    too_small = offset.float() + max_code * scale.float() < hi
    scale = torch.where(too_small, torch.nextafter(scale, scale.new_tensor(torch.inf)), scale)
    codes = torch.round((x - offset.float()) / scale.float()).clamp(0, max_code).to(torch.uint8)
    return Kv4Block(codes=pack_bits(codes, bits), scales=scale, offsets=offset, bits=bits)


def dequantize_kv4(block: Kv4Block) -> torch.Tensor:
    """Values ``offset + scale * q`` as float32 ``[batch, kv_heads, tokens, head_dim]``."""
    codes = unpack_bits(block.codes, block.bits, block.codes.shape[-1] * 8 // block.bits)
    return block.offsets.float() + block.scales.float() * codes.float()


class Kv4Cache:
    """Append-only packed 4- or 8-bit storage for one K or V stream of shape [batch, kv_heads, *, head_dim]."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, config: Kv4Config = Kv4Config()):
        """Empty cache; with 4-bit codes head_dim must be even (two codes per byte)."""
        if min(batch, kv_heads, head_dim) < 1:
            raise InputError(
                f"cache shape batch={batch}, kv_heads={kv_heads}, head_dim={head_dim} must be positive"
            )
        _check_head_dim(head_dim, config.bits, "the cache")
        self.batch, self.kv_heads, self.head_dim, self.config = batch, kv_heads, head_dim, config
        self._blocks: list[Kv4Block] = []
        self._pending = torch.zeros(batch, kv_heads, 0, head_dim, dtype=torch.float16)

    @property
    def num_tokens(self) -> int:
        """Tokens stored, quantized or staged."""
        return sum(b.codes.shape[2] for b in self._blocks) + self._pending.shape[2]

    def append(self, values: torch.Tensor) -> None:
        """Append tokens: float ``[batch, kv_heads, new_tokens, head_dim]``."""
        _check_kv(values, "appended values", self.config.bits)
        expected = (self.batch, self.kv_heads, self.head_dim)
        got = (values.shape[0], values.shape[1], values.shape[3])
        if got != expected:
            raise InputError(
                f"appended values have (batch, kv_heads, head_dim) {got} but the cache holds {expected}; "
                "append tensors laid out as [batch, kv_heads, tokens, head_dim]"
            )
        if values.shape[2] == 0:
            return
        if self.config.granularity is KvGranularity.PER_TOKEN:
            self._blocks.append(quantize_kv4(values, KvGranularity.PER_TOKEN, self.config.bits))
            return
        staged = torch.cat([self._pending, values.to(torch.float16)], dim=2)
        full = staged.shape[2] // self.config.block_tokens * self.config.block_tokens
        for start in range(0, full, self.config.block_tokens):
            chunk = staged[:, :, start : start + self.config.block_tokens]
            self._blocks.append(quantize_kv4(chunk, KvGranularity.PER_CHANNEL, self.config.bits))
        self._pending = staged[:, :, full:].clone()

    def read(self) -> torch.Tensor:
        """All stored tokens, dequantized: float32 ``[batch, kv_heads, num_tokens, head_dim]``."""
        parts = [dequantize_kv4(b) for b in self._blocks] + [self._pending.float()]
        return torch.cat(parts, dim=2)

    def bytes_per_token(self) -> float:
        """Bytes one quantized token of one sequence occupies across all kv heads (codes + fp16
        scales and offsets; per-channel scales amortized over block_tokens)."""
        codes = packed_length(self.head_dim, self.config.bits)
        if self.config.granularity is KvGranularity.PER_TOKEN:
            params = 2 * 2
        else:
            params = 2 * 2 * self.head_dim / self.config.block_tokens
        return self.kv_heads * (codes + params)

    def stored_bytes(self) -> int:
        """Bytes held now: quantized blocks plus the float16 staging buffer."""
        pending = self._pending.numel() * self._pending.element_size()
        return sum(b.nbytes for b in self._blocks) + pending


def _check_head_dim(head_dim: int, bits: int, what: str) -> None:
    """Raise InputError unless ``head_dim`` codes of ``bits`` bits fill whole bytes."""
    if head_dim * bits % 8:
        raise InputError(
            f"head_dim {head_dim} of {what} is odd; {bits}-bit packing stores {8 // bits} channels per byte, "
            "so it needs an even head_dim (or use 8-bit KV codes)"
        )


def _check_kv(values: torch.Tensor, what: str, bits: int) -> None:
    """Raise InputError unless values is a float ``[batch, kv_heads, tokens, head_dim]`` tensor whose
    head_dim packs into whole bytes and whose magnitudes are float16-representable."""
    if values.dim() != 4 or not values.dtype.is_floating_point:
        raise InputError(
            f"{what} have dtype {values.dtype} and shape {tuple(values.shape)}; pass a float tensor "
            "[batch, kv_heads, tokens, head_dim]"
        )
    _check_head_dim(values.shape[-1], bits, what)
    if values.numel() and not bool(values.abs().max() <= _FP16_MAX):
        raise InputError(
            f"{what} hold values beyond the float16 range (or NaN); the cache stores float16 scales, "
            "so clamp or rescale K/V first"
        )
