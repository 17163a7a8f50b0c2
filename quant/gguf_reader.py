"""Read a llama.cpp GGUF file into a ModelConfig, float32 weights (HF names) and a tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from llmfab.errors import InputError
from llmfab.quant.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from llmfab.quant.tokenizer import Tokenizer
from llmfab.quant.weights import validate_weights

GGUF_MAGIC = b"GGUF"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str, path: Path) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    raise InputError(f"{path}: unexpected tensor {gguf_name!r} for a LLaMA-family GGUF")


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> HF's half-split order).

    llama.cpp's converter stores each head's rows as (pair, 2) interleaved; Hugging Face keeps
    the two halves of the head apart. Shape [n_heads*head_dim, in] is kept.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InputError(
            f"{path}: not a GGUF file (magic bytes {magic!r}, expected {GGUF_MAGIC!r}); "
            "pass a llama.cpp .gguf file or a Hugging Face model folder"
        )


def open_gguf(path: Path):
    """Parse the GGUF header and tensor index, turning reader failures into clear errors."""
    import gguf

    check_magic(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # the reader fails in many ways on damaged headers
        raise InputError(
            f"{path}: corrupt or truncated GGUF header ({type(err).__name__}: {err}); "
            "re-download or re-convert the file"
        ) from None
    size = os.path.getsize(path)
    for tensor in reader.tensors:
        end = tensor.data_offset + tensor.n_bytes
        if end > size or tensor.data.nbytes != tensor.n_bytes:
            raise InputError(
                f"{path}: truncated GGUF: tensor {tensor.name} needs bytes up to {end} but the "
                f"file has {size}; re-download or re-convert the file"
            )
    return reader


def field_value(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def read_config(reader, path: Path) -> ModelConfig:
    arch = field_value(reader, "general.architecture")
    if arch is None:
        raise InputError(f"{path}: GGUF metadata lacks general.architecture")

    def need(key: str):
        value = field_value(reader, f"{arch}.{key}")
        if value is None:
            raise InputError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    if arch not in SUPPORTED_ARCHITECTURES:
        raise InputError(
            f"{path}: model architecture {arch!r} is not supported; "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    vocab = field_value(reader, f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    scaling_type = field_value(reader, f"{arch}.rope.scaling.type", "none")
    rope_scaling = RopeScaling()
    if scaling_type == "linear":
        rope_scaling = RopeScaling("linear", float(field_value(reader, f"{arch}.rope.scaling.factor")))
    elif scaling_type not in ("none", None):
        raise InputError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported (none, linear)")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise InputError(
            f"{path}: GGUF carries rope_freqs (Llama-3.1 RoPE scaling), which this reader does "
            "not map; load the Hugging Face folder of the model instead"
        )
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab or 0),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(field_value(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(field_value(reader, f"{arch}.attention.key_length", hidden // heads)),
        max_position_embeddings=int(need("context_length")),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(field_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings=not has_output,
        bos_token_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=field_value(reader, "tokenizer.ggml.eos_token_id"),
        name=str(field_value(reader, "general.name", path.stem)),
    )


def dequantize(tensor, path: Path) -> np.ndarray:
    import gguf

    try:
        return np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    except NotImplementedError:
        raise InputError(
            f"{path}: tensor {tensor.name} uses GGUF type {tensor.tensor_type.name}, which gguf "
            "cannot dequantize; convert the model to F16, Q8_0 or Q4_1"
        ) from None


def read_gguf(path: Path, progress=None) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, float32 weights with Hugging Face names and [out, in] layout, and tokenizer."""
    path = Path(path)
    reader = open_gguf(path)
    config = read_config(reader, path)
    arrays: dict[str, np.ndarray] = {}
    tensors = list(reader.tensors)
    for tensor in progress(tensors, desc=f"dequantize {path.name}") if progress else tensors:
        arrays[hf_name(tensor.name, path)] = dequantize(tensor, path)
    validate_weights(config, arrays, str(path))
    weights: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.endswith("q_proj.weight"):
            array = unpermute_rope_rows(array, config.num_heads)
        elif name.endswith("k_proj.weight"):
            array = unpermute_rope_rows(array, config.num_kv_heads)
        weights[name] = torch.from_numpy(np.ascontiguousarray(array))
    return config, weights, Tokenizer.from_gguf_fields(lambda key: field_value(reader, key), path)
