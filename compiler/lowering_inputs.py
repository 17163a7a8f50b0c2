"""Input arrays of lowered cascades, in their declared rank order (float64 for the interpreter).

Weights come from the fake-quant model's integer buffers (codes, zero points, float16 scales,
2:4 masks); activations, KV-cache contents and RoPE tables are converted from torch layouts.
"""

from __future__ import annotations

import numpy as np
import torch

from llmfab.compiler.lowering import LoweredEnds, LoweredLayer, PositionTables
from llmfab.quant.model import projection


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def layer_weights(model, lowered: LoweredLayer) -> dict[str, np.ndarray]:
    """Weight tensors of every projection and the two norm gains G1, G2."""
    block = model.model.layers[lowered.layer]
    arrays = {"G1": _np(block.input_layernorm.weight), "G2": _np(block.post_attention_layernorm.weight)}
    for name, layout in lowered.linears:
        arrays.update(layout.arrays(projection(block, name)))
    return arrays


def hidden(x: torch.Tensor) -> np.ndarray:
    """Hidden states [T, H] (one sequence) -> X[H, P]."""
    return _np(x).T.copy()


def from_hidden(x: np.ndarray) -> torch.Tensor:
    """X[H, P] or LOGITS[V, P] -> torch [P, H] (float64)."""
    return torch.from_numpy(np.ascontiguousarray(x.T))


def _blocked(array: np.ndarray, lowered: LoweredLayer) -> np.ndarray:
    plan = lowered.attention
    if not plan.blocked:
        return array
    return array.reshape(*array.shape[:-1], plan.keys // plan.block, plan.block)


def cache(lowered: LoweredLayer, keys: torch.Tensor, values: torch.Tensor) -> dict[str, np.ndarray]:
    """KC[G, EH, EI, keys] and VC[F, G, keys] from the cache's keys/values [kv_heads, keys, head_dim]
    (as stored: dense caches hold keys after RoPE, the Λ cache before)."""
    kv, n, d = keys.shape
    if n != lowered.attention.keys:
        raise ValueError(f"the cascade attends to {lowered.attention.keys} keys, the cache holds {n}")
    k = _np(keys).reshape(kv, n, 2, d // 2).transpose(0, 2, 3, 1)
    v = _np(values).transpose(2, 0, 1)
    return {"KC": _blocked(k, lowered), "VC": _blocked(v, lowered)}


def rope_tables(rotary, positions, prefix: str) -> dict[str, np.ndarray]:
    """COS<prefix>/SIN<prefix>[EI, positions] from the model's RotaryEmbedding (half-split layout)."""
    cos, sin = rotary(torch.tensor(positions).unsqueeze(0))
    half = cos.shape[-1] // 2
    return {f"COS{prefix}": _np(cos[0, :, :half]).T.copy(), f"SIN{prefix}": _np(sin[0, :, :half]).T.copy()}


def positions(model, lowered: LoweredLayer) -> dict[str, np.ndarray]:
    tables: PositionTables = lowered.positions
    rotary = model.model.rotary
    arrays = rope_tables(rotary, tables.queries, "Q")
    if tables.keys is not None:
        arrays.update({k: _blocked(v, lowered) for k, v in rope_tables(rotary, tables.keys, "K").items()})
    if tables.sinks is not None:
        arrays.update(rope_tables(rotary, tables.sinks, "S"))
    return arrays


def embedding_inputs(model, lowered: LoweredEnds, token_ids) -> dict[str, np.ndarray]:
    ids = list(token_ids)
    onehot = np.zeros((model.config.vocab_size, len(ids)))
    onehot[ids, range(len(ids))] = 1.0
    return {"TOK": onehot, **lowered.table.arrays(model.model.embed_tokens)}


def head_inputs(model, lowered: LoweredEnds) -> dict[str, np.ndarray]:
    return {"GF": _np(model.model.norm.weight), **lowered.table.arrays(model.lm_head)}
