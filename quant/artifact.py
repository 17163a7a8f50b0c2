"""The compressed-model artifact: a folder the compiler and the CLI read (docs/packed_format.md).

``save_artifact`` writes ``model.safetensors`` (bit-packed codes, float16 scales, packed zero points
and 2:4 indices, float32 norms, 8-bit embeddings), ``tokenizer.json`` and ``manifest.json`` (model
config, recipe, format version, sha256 of every tensor and file, sizes) into a temporary sibling
folder and renames it into place. ``load_artifact`` checks all of it and rebuilds the fake-quant
model; loading what was saved gives bit-identical tensors and logits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llmfab.atomic import atomic_folder
from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant.model import LlamaModel, iter_linears, replace_linear
from llmfab.quant.packing import SUPPORTED_BITS, pack_2to4_index, pack_bits, unpack_2to4_index, unpack_bits
from llmfab.quant.qlinear import QuantEmbedding, QuantLinear
from llmfab.quant.recipe import Recipe, kv_bytes_per_token
from llmfab.quant.rope import RotaryEmbedding
from llmfab.quant.tokenizer import Tokenizer
from llmfab.quant.weight_quant import QuantizedWeight
from llmfab.quant.weights import ATTENTION_PROJECTIONS

FORMAT = "llmfab-compressed-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "model.safetensors"
TOKENIZER = "tokenizer.json"
NORM_NAMES = ("input_layernorm", "post_attention_layernorm")


@dataclass(frozen=True, eq=False)
class Artifact:
    """A loaded artifact: the fake-quant model, what it was made from, and its manifest (dict)."""

    folder: Path
    model: LlamaModel
    config: ModelConfig
    recipe: Recipe
    tokenizer: Tokenizer
    manifest: dict


def check_output_folder(folder: Path | str) -> None:
    """Raise InputError if ``folder`` holds something other than an earlier artifact."""
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or (folder / MANIFEST).is_file())):
        raise InputError(
            f"output {folder} exists and is not an llmfab artifact folder; choose a new or empty folder with -o"
        )


def save_artifact(folder: Path | str, model: LlamaModel, recipe: Recipe, tokenizer: Tokenizer,
                  model_name: str = "") -> dict:
    """Write the compressed ``model`` (QuantLinear projections, QuantEmbedding) to ``folder``.

    An existing artifact in ``folder`` is replaced; returns the manifest written.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    check_output_folder(folder)
    tensors, layouts = _packed_tensors(model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "config": model.config.to_dict(),
        "recipe": recipe.to_dict(),
        "quantized": layouts,
        "tensors": {name: _describe(t) for name, t in sorted(tensors.items())},
        "sizes": _sizes(model.config, recipe, tensors, layouts),
    }
    tokenizer_json = tokenizer.to_json()
    manifest["files"] = {TOKENIZER: hashlib.sha256(tokenizer_json.encode()).hexdigest()}
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        (tmp / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    return manifest


def load_artifact(folder: Path | str) -> Artifact:
    """Read and verify an artifact written by :func:`save_artifact`; rebuild the fake-quant model."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    tensors = _read_tensors(folder, manifest)
    tokenizer_path = folder / TOKENIZER
    if not tokenizer_path.is_file():
        raise InputError(f"{tokenizer_path} is missing; the artifact is incomplete, run llmfab quantize again")
    tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
    if hashlib.sha256(tokenizer_json.encode()).hexdigest() != manifest.get("files", {}).get(TOKENIZER):
        raise InputError(f"{tokenizer_path} does not match its sha256 in {MANIFEST}; the file was changed or damaged")
    try:
        config = ModelConfig.from_dict(manifest["config"])
        recipe = Recipe.from_dict(manifest["recipe"])
    except (TypeError, KeyError) as err:
        raise InputError(f"{folder / MANIFEST} has a malformed config or recipe ({err})") from None
    model = _rebuild_model(config, recipe, tensors, manifest["quantized"])
    return Artifact(folder, model, config, recipe, Tokenizer.from_json(tokenizer_json), manifest)


def _packed_tensors(model: LlamaModel) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every stored tensor by name, and the layout of each quantized matrix by its prefix."""
    tensors: dict[str, torch.Tensor] = {}
    layouts: dict[str, dict] = {}
    quantized = [(f"model.layers.{i}.{_parent(name)}.{name}", module) for i, name, module in iter_linears(model)]
    quantized.append(("model.embed_tokens", model.model.embed_tokens))
    if not model.config.tie_word_embeddings:
        quantized.append(("lm_head", model.lm_head))
    for prefix, module in quantized:
        if not isinstance(module, (QuantLinear, QuantEmbedding)):
            raise InputError(f"{prefix} is not quantized ({type(module).__name__}); run quantize_model first")
        q = module.quantized
        zero_bits = q.bits + 1 if q.zero_halves else q.bits
        stored_zero_bits = zero_bits if zero_bits in SUPPORTED_BITS else 8
        tensors[f"{prefix}.codes"] = pack_bits(q.codes, q.bits)
        tensors[f"{prefix}.scales"] = q.scales.contiguous().clone()
        tensors[f"{prefix}.zeros"] = pack_bits(q.zeros, stored_zero_bits)
        if q.is_sparse:
            tensors[f"{prefix}.index"] = pack_2to4_index(q.mask_codes)
        layouts[prefix] = {
            "bits": q.bits, "group_size": q.group_size, "rows": q.codes.shape[0],
            "in_features": q.in_features, "codes_per_row": q.codes.shape[1], "sparse": q.is_sparse,
            "zero_halves": q.zero_halves, "zero_bits": stored_zero_bits,
            "act_bits": getattr(module, "act_bits", None),
        }
    for i, layer in enumerate(model.model.layers):
        for norm in NORM_NAMES:
            tensors[f"model.layers.{i}.{norm}.weight"] = getattr(layer, norm).weight.detach().float().clone()
    tensors["model.norm.weight"] = model.model.norm.weight.detach().float().clone()
    return tensors, layouts


def _unpack(tensors: dict[str, torch.Tensor], prefix: str, layout: dict) -> QuantizedWeight:
    """The QuantizedWeight stored under ``prefix`` with ``layout`` (a manifest entry)."""
    groups = layout["in_features"] // layout["group_size"]
    mask = None
    if layout["sparse"]:
        mask = unpack_2to4_index(tensors[f"{prefix}.index"], layout["in_features"] // 4)
    return QuantizedWeight(
        codes=unpack_bits(tensors[f"{prefix}.codes"], layout["bits"], layout["codes_per_row"]),
        scales=tensors[f"{prefix}.scales"],
        zeros=unpack_bits(tensors[f"{prefix}.zeros"], layout["zero_bits"], groups),
        bits=layout["bits"], group_size=layout["group_size"], mask_codes=mask,
        zero_halves=layout["zero_halves"],
    )


def _rebuild_model(config: ModelConfig, recipe: Recipe, tensors: dict, layouts: dict) -> LlamaModel:
    """A LlamaModel with QuantLinear / QuantEmbedding modules built from the stored tensors."""
    with torch.device("meta"):
        model = LlamaModel(config)
    norms = {name: t for name, t in tensors.items() if name.endswith("norm.weight")}
    model.load_state_dict(norms, strict=False, assign=True)
    for i, name, _ in iter_linears(model):
        prefix = f"model.layers.{i}.{_parent(name)}.{name}"
        layout = layouts[prefix]
        replace_linear(model, i, name, QuantLinear(_unpack(tensors, prefix, layout), layout["act_bits"]))
    embed = QuantEmbedding(_unpack(tensors, "model.embed_tokens", layouts["model.embed_tokens"]))
    head_act = recipe.head_input_bits
    if config.tie_word_embeddings:
        head = QuantLinear(embed.quantized, head_act, weight=embed.weight)
    else:
        head = QuantLinear(_unpack(tensors, "lm_head", layouts["lm_head"]), layouts["lm_head"]["act_bits"])
    model.model.embed_tokens, model.lm_head = embed, head
    model.model.rotary = RotaryEmbedding(config)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise InputError(f"the artifact lacks tensors for {leftover[:3]}; it is incomplete, run llmfab quantize again")
    return model.eval()


def _read_manifest(folder: Path) -> dict:
    """The parsed manifest, with its format and version checked."""
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder} is not an llmfab artifact (no {MANIFEST}); make one with `llmfab quantize`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); the artifact is damaged, run llmfab quantize again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path} does not describe an {FORMAT} artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has format version {manifest.get('format_version')!r}, but this llmfab reads version "
            f"{FORMAT_VERSION}; re-create the artifact with this version's `llmfab quantize`"
        )
    return manifest


def _read_tensors(folder: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, each checked against its manifest entry."""
    from safetensors.torch import load_file

    path = folder / TENSORS
    if not path.is_file():
        raise InputError(f"{path} is missing; the artifact is incomplete, run llmfab quantize again")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated or bad headers
        raise InputError(f"{path} is damaged and cannot be read ({err}); run llmfab quantize again") from None
    expected = manifest["tensors"]
    for name in sorted(set(expected) | set(tensors)):
        if name not in tensors:
            raise InputError(f"{path} lacks tensor {name!r} listed in {MANIFEST}; the artifact is incomplete")
        if name not in expected:
            raise InputError(f"{path} holds tensor {name!r} that {MANIFEST} does not list; the files do not belong together")
        if _describe(tensors[name]) != expected[name]:
            raise InputError(
                f"tensor {name!r} in {path} does not match its shape, dtype or sha256 in {MANIFEST}; "
                "the file was changed or damaged, run llmfab quantize again"
            )
    return tensors


def _describe(tensor: torch.Tensor) -> dict:
    """dtype, shape and sha256 of a tensor's bytes (the manifest entry)."""
    data = tensor.contiguous().view(torch.uint8) if tensor.numel() else tensor
    return {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest(),
    }


def _sizes(config: ModelConfig, recipe: Recipe, tensors: dict, layouts: dict) -> dict:
    """Bits per decoder weight (codes, scales, zeros and 2:4 index), bytes of everything stored."""
    decoder = [p for p in layouts if p.startswith("model.layers.")]
    weights = sum(layouts[p]["rows"] * layouts[p]["in_features"] for p in decoder)
    decoder_bytes = sum(t.nbytes for n, t in tensors.items() if n.rsplit(".", 1)[0] in decoder)
    model_bytes = sum(t.nbytes for t in tensors.values())
    return {
        "decoder_weights": weights,
        "decoder_bytes": decoder_bytes,
        "bits_per_weight": round(8 * decoder_bytes / weights, 4),
        "model_bytes": model_bytes,
        "bits_per_parameter": round(8 * model_bytes / config.num_parameters(), 4),
        "kv_bytes_per_token": kv_bytes_per_token(config, recipe),
        "kv_max_tokens": recipe.sinks + recipe.window if recipe.lambda_attention else None,
    }


def _parent(name: str) -> str:
    """``self_attn`` or ``mlp``: the submodule holding projection ``name``."""
    return "self_attn" if name in ATTENTION_PROJECTIONS else "mlp"


UNROUNDED = "unrounded.safetensors"


def save_unrounded(folder: Path | str, model: LlamaModel) -> Path:
    """Write GPTQ's pre-rounding weights of ``model``'s decoder projections (float32 ``[out, in]``,
    zero where 2:4 pruned) next to the artifact in ``folder`` as ``unrounded.safetensors``, tied
    to that artifact by the sha256 of its codes: the starting point that block reconstruction and
    ``weights``-mode QAT need when they start from the artifact (``--qat-from``). Not part of the
    compressed model (the manifest does not list it); written atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {}
    for i, name, module in iter_linears(model):
        if not isinstance(module, QuantLinear) or module.unrounded is None:
            raise InputError(f"layer {i} {name} has no unrounded GPTQ weights to keep (only a freshly "
                             "calibrated, untrained model has them); drop --keep-unrounded")
        tensors[f"model.layers.{i}.{_parent(name)}.{name}"] = module.unrounded.float().contiguous()
    path = folder / UNROUNDED
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"codes_sha256": codes_digest(model)})
    tmp.replace(path)
    return path


def load_unrounded(folder: Path | str, model: LlamaModel) -> bool:
    """Attach the pre-rounding weights of ``folder``'s ``unrounded.safetensors`` (see
    :func:`save_unrounded`) to ``model``, the artifact's model; False when there is no such file.
    Raises InputError when the file is damaged or was written for other codes."""
    from safetensors import safe_open

    path = Path(folder) / UNROUNDED
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            digest = (handle.metadata() or {}).get("codes_sha256")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or bad headers
        raise InputError(f"{path} is damaged and cannot be read ({err}); delete it, or quantize again "
                         "with --keep-unrounded") from None
    if digest != codes_digest(model):
        raise InputError(f"{path} was written for other codes than the artifact's {TENSORS}; the files do "
                         "not belong together (delete it, or quantize again with --keep-unrounded)")
    for i, name, module in iter_linears(model):
        key = f"model.layers.{i}.{_parent(name)}.{name}"
        tensor = tensors.get(key)
        if tensor is None or tuple(tensor.shape) != tuple(module.weight.shape):
            raise InputError(f"{path} lacks {key} or holds it with another shape; delete it, or quantize "
                             "again with --keep-unrounded")
        module.unrounded = tensor.float()
    return True


def codes_digest(model: LlamaModel) -> str:
    """sha256 over the codes, scales, zero points and 2:4 masks of ``model``'s decoder projections."""
    digest = hashlib.sha256()
    for _, _, module in iter_linears(model):
        for key in ("codes", "scales", "zeros", "mask_codes"):
            tensor = getattr(module, key)
            if tensor is not None:
                digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
