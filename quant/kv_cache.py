"""Key/value caches for decoding. The dense float cache here is the reference; compressed
caches (4-bit, Λ-shaped) implement the same two methods."""

from __future__ import annotations

import torch


class DenseKVCache:
    """Float keys and values of one layer, [B, kv_heads, tokens, head_dim], grown in chunks."""

    def __init__(self, chunk: int = 256):
        self.chunk = chunk
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values [B, kv, T, D]; return every cached key/value so far."""
        new = keys.shape[2]
        if self.keys is None or self.length + new > self.keys.shape[2]:
            capacity = self.length + new + self.chunk
            grown_k = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
            grown_v = values.new_empty(*values.shape[:2], capacity, values.shape[3])
            if self.keys is not None:
                grown_k[:, :, : self.length] = self.keys[:, :, : self.length]
                grown_v[:, :, : self.length] = self.values[:, :, : self.length]
            self.keys, self.values = grown_k, grown_v
        self.keys[:, :, self.length : self.length + new] = keys
        self.values[:, :, self.length : self.length + new] = values
        self.length += new
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        per_token = self.keys[:, :, :1].nbytes + self.values[:, :, :1].nbytes
        return per_token * self.length


class ModelCache:
    """One cache per decoder layer plus the number of positions already processed."""

    def __init__(self, num_layers: int, factory=DenseKVCache):
        self.layers = [factory() for _ in range(num_layers)]
        self.position = 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
