"""4-bit KV cache storage: packed codes with float16 scales and offsets.

A K or V tensor ``[batch, kv_heads, tokens, head_dim]`` is stored as 4-bit codes q in 0..15, two
per byte (even ``head_dim`` index in the low nibble, see :mod:`llmfab.quant.packing`). A value is
``offset + scale * q``, asymmetric, with ``offset`` (the range minimum, rounded down) and
``scale`` (rounded up so the range maximum stays representable) stored as float16. Hence the
round-trip error of every stored value is at most scale / 2.

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
from llmfab.quant.packing import pack_bits, unpack_bits

_MAX_CODE = 15
_FP16_MAX = float(torch.finfo(torch.float16).max)
_FP16_TINY = float(torch.finfo(torch.float16).tiny)


class KvGranularity(enum.Enum):
    """Which values share one scale and offset."""

    PER_TOKEN = "per_token"
    PER_CHANNEL = "per_channel"


@dataclass(frozen=True)
class Kv4Config:
    """KV4 settings; ``block_tokens`` applies to PER_CHANNEL only."""

    granularity: KvGranularity = KvGranularity.PER_TOKEN
    block_tokens: int = 32

    def __post_init__(self) -> None:
        """Reject a non-positive block length."""
        if self.block_tokens < 1:
            raise InputError(f"block_tokens {self.block_tokens} must be a positive token count, e.g. 32")


@dataclass(frozen=True, eq=False)
class Kv4Block:
    """Quantized tokens.

    codes: uint8 ``[batch, kv_heads, tokens, head_dim/2]``.
    scales, offsets: float16 ``[batch, kv_heads, tokens, 1]`` (per-token) or
    ``[batch, kv_heads, 1, head_dim]`` (per-channel).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales and offsets."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.offsets))


def quantize_kv4(values: torch.Tensor, granularity: KvGranularity) -> Kv4Block:
    """Quantize K or V values to packed 4-bit codes.

    Args:
        values: float ``[batch, kv_heads, tokens, head_dim]``, head_dim even, |values| <= 65504.
        granularity: PER_TOKEN (statistics over head_dim) or PER_CHANNEL (over all given tokens).

    Returns:
        :class:`Kv4Block`.
    """
    _check_kv(values, "values")
    x = values.float()
    reduce_dim = -1 if granularity is KvGranularity.PER_TOKEN else -2
    lo = x.amin(dim=reduce_dim, keepdim=True)
    hi = x.amax(dim=reduce_dim, keepdim=True)
    offset = lo.to(torch.float16)
    offset = torch.where(offset.float() > lo, torch.nextafter(offset, offset.new_tensor(-torch.inf)), offset)
    scale = ((hi - offset.float()) / _MAX_CODE).clamp(min=_FP16_TINY).to(torch.float16)
    too_small = offset.float() + _MAX_CODE * scale.float() < hi
    scale = torch.where(too_small, torch.nextafter(scale, scale.new_tensor(torch.inf)), scale)
    codes = torch.round((x - offset.float()) / scale.float()).clamp(0, _MAX_CODE).to(torch.uint8)
    return Kv4Block(codes=pack_bits(codes, 4), scales=scale, offsets=offset)


def dequantize_kv4(block: Kv4Block) -> torch.Tensor:
    """Values ``offset + scale * q`` as float32 ``[batch, kv_heads, tokens, head_dim]``."""
    codes = unpack_bits(block.codes, 4, block.codes.shape[-1] * 2)
    return block.offsets.float() + block.scales.float() * codes.float()


class Kv4Cache:
    """Append-only packed 4-bit storage for one K or V stream of shape [batch, kv_heads, *, head_dim]."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, config: Kv4Config = Kv4Config()):
        """Empty cache; head_dim must be even (two codes per byte)."""
        if min(batch, kv_heads, head_dim) < 1:
            raise InputError(
                f"cache shape batch={batch}, kv_heads={kv_heads}, head_dim={head_dim} must be positive"
            )
        if head_dim % 2:
            raise InputError(f"head_dim {head_dim} is odd; 4-bit packing stores two channels per byte")
        self.batch, self.kv_heads, self.head_dim, self.config = batch, kv_heads, head_dim, config
        self._blocks: list[Kv4Block] = []
        self._pending = torch.zeros(batch, kv_heads, 0, head_dim, dtype=torch.float16)

    @property
    def num_tokens(self) -> int:
        """Tokens stored, quantized or staged."""
        return sum(b.codes.shape[2] for b in self._blocks) + self._pending.shape[2]

    def append(self, values: torch.Tensor) -> None:
        """Append tokens: float ``[batch, kv_heads, new_tokens, head_dim]``."""
        _check_kv(values, "appended values")
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
            self._blocks.append(quantize_kv4(values, KvGranularity.PER_TOKEN))
            return
        staged = torch.cat([self._pending, values.to(torch.float16)], dim=2)
        full = staged.shape[2] // self.config.block_tokens * self.config.block_tokens
        for start in range(0, full, self.config.block_tokens):
            chunk = staged[:, :, start : start + self.config.block_tokens]
            self._blocks.append(quantize_kv4(chunk, KvGranularity.PER_CHANNEL))
        self._pending = staged[:, :, full:].clone()

    def read(self) -> torch.Tensor:
        """All stored tokens, dequantized: float32 ``[batch, kv_heads, num_tokens, head_dim]``."""
        parts = [dequantize_kv4(b) for b in self._blocks] + [self._pending.float()]
        return torch.cat(parts, dim=2)

    def bytes_per_token(self) -> float:
        """Bytes one quantized token of one sequence occupies across all kv heads (codes + fp16
        scales and offsets; per-channel scales amortized over block_tokens)."""
        codes = self.head_dim // 2
        if self.config.granularity is KvGranularity.PER_TOKEN:
            params = 2 * 2
        else:
            params = 2 * 2 * self.head_dim / self.config.block_tokens
        return self.kv_heads * (codes + params)

    def stored_bytes(self) -> int:
        """Bytes held now: quantized blocks plus the float16 staging buffer."""
        pending = self._pending.numel() * self._pending.element_size()
        return sum(b.nbytes for b in self._blocks) + pending


def _check_kv(values: torch.Tensor, what: str) -> None:
    """Raise InputError unless values is a float ``[batch, kv_heads, tokens, head_dim]`` tensor with
    even head_dim and float16-representable magnitudes."""
    if values.dim() != 4 or not values.dtype.is_floating_point:
        raise InputError(
            f"{what} have dtype {values.dtype} and shape {tuple(values.shape)}; pass a float tensor "
            "[batch, kv_heads, tokens, head_dim]"
        )
    if values.shape[-1] % 2:
        raise InputError(f"{what} have odd head_dim {values.shape[-1]}; 4-bit packing needs it even")
    if values.numel() and not bool(values.abs().max() <= _FP16_MAX):
        raise InputError(
            f"{what} hold values beyond the float16 range (or NaN); the cache stores float16 scales, "
            "so clamp or rescale K/V first"
        )
