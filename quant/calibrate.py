"""Post-training compression of a float model, one decoder layer at a time (GPTQ-paper style).

If the recipe sets ``smooth_alpha``, SmoothQuant factors from the float model's activations over
the calibration windows are first folded into the norms and weights (quant/smoothing.py).
Calibration windows are embedded once; then for every decoder layer, in order:

1. the layer's projections are compressed in four steps (q/k/v, then o, then gate/up, then
   down); before each step the layer runs over all windows with forward hooks that accumulate
   the Hessian 2XᵀX/n of each projection's input, so a step sees the inputs produced by the
   projections already compressed before it;
2. each projection is pruned to 2:4 (SparseGPT jointly with GPTQ, or a Wanda mask followed by
   GPTQ) and/or quantized with GPTQ, and replaced by a :class:`QuantLinear`;
3. the compressed layer's outputs become the next layer's inputs.

Finally the embedding table and LM head are stored as 8-bit per-row codes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmfab.errors import InputError
from llmfab.quant.gptq import gptq_quantize, sparsegpt_gptq
from llmfab.quant.hessian import HessianAccumulator
from llmfab.quant.model import LlamaModel, projection, replace_linear
from llmfab.quant.obs_sweep import ObsConfig
from llmfab.quant.qlinear import QuantLinear, quantize_embeddings
from llmfab.quant.recipe import FLOAT_BITS, PruningMethod, Recipe
from llmfab.quant.smoothing import smooth_model
from llmfab.quant.sparsity import wanda_2to4_mask
from llmfab.quant.weight_quant import GroupQuantConfig

CALIBRATION_FILE = "emma_calibration.txt"
# QAT and block reconstruction train on passages of four novels (tools/make_training_excerpt.py)
TRAINING_FILE = "austen_training.txt"
SEQUENTIAL_STEPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
WINDOWS_PER_BATCH = 8


def bundled_text(name: str) -> Path:
    """A text file shipped in ``llmfab/data``."""
    from importlib.resources import files

    return Path(str(files("llmfab") / "data" / name))


def default_calibration_text() -> Path:
    """The calibration excerpt shipped with llmfab (start of Austen's Emma, public domain)."""
    return bundled_text(CALIBRATION_FILE)


def default_training_text() -> Path:
    """The training text shipped with llmfab: 96 passages of about 3,500 characters from Emma,
    Mansfield Park, Pride and Prejudice and Sense and Sensibility (95,800 SmolLM2 tokens)."""
    return bundled_text(TRAINING_FILE)


def text_tokens(tokenizer, paths: list[Path], option: str) -> list[int]:
    """The UTF-8 files ``paths`` tokenized and concatenated; a missing or undecodable file is an
    error naming the command-line ``option`` that gives it."""
    tokens: list[int] = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{option} {path} does not exist; pass an existing UTF-8 text file")
        try:
            tokens += tokenizer.encode(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise InputError(f"{option} {path} is not UTF-8 ({err.reason} at byte {err.start})") from None
    return tokens


def calibration_paths(recipe: Recipe) -> list[Path]:
    """The recipe's calibration texts, or the bundled excerpt when it names none."""
    return [Path(p) for p in recipe.calib_texts] or [default_calibration_text()]


def calibration_tokens(tokenizer, recipe: Recipe) -> list[int]:
    """The recipe's calibration texts (default: the bundled excerpt), tokenized and concatenated."""
    return text_tokens(tokenizer, calibration_paths(recipe), "--calib-text")


def calibration_windows(tokenizer, recipe: Recipe) -> torch.Tensor:
    """Token windows ``[calib_samples, calib_seq_len]`` (int64) from the recipe's texts.

    The texts are tokenized and concatenated; window starts are spread evenly over the tokens, so
    windows do not overlap when there are enough tokens and overlap evenly when there are not.
    """
    tokens = calibration_tokens(tokenizer, recipe)
    if len(tokens) < recipe.calib_seq_len:
        raise InputError(
            f"calibration text ({', '.join(map(str, calibration_paths(recipe)))}) has {len(tokens)} tokens, fewer than "
            f"--calib-seq-len {recipe.calib_seq_len}; pass a longer --calib-text or a shorter length"
        )
    return spread_windows(torch.tensor(tokens, dtype=torch.long), recipe.calib_samples, recipe.calib_seq_len)


def spread_windows(ids: torch.Tensor, count: int, seq_len: int) -> torch.Tensor:
    """``count`` windows ``[count, seq_len]`` of the token ids ``[n >= seq_len]``, their starts
    spread evenly from the first token to the last window that fits."""
    starts = torch.linspace(0, len(ids) - seq_len, count).round().long()
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def quantize_model(model: LlamaModel, recipe: Recipe, windows: torch.Tensor, progress=None,
                   obs: ObsConfig = ObsConfig()) -> LlamaModel:
    """Compress ``model`` in place per ``recipe`` using calibration ``windows`` ``[N, T]``.

    Returns the same model with every decoder projection a :class:`QuantLinear` and 8-bit
    per-row embeddings / LM head.
    """
    recipe.check_model(model.config)
    act_bits = None if recipe.act_bits == FLOAT_BITS else recipe.act_bits
    if recipe.smooth_alpha is not None:
        smooth_model(model, windows, recipe.smooth_alpha)
    hidden = model.model.embed_tokens(windows).float()
    positions = torch.arange(windows.shape[1]).unsqueeze(0)
    cos, sin = model.model.rotary(positions)
    layers = list(enumerate(model.model.layers))
    for index, layer in progress(layers, desc="quantize", unit="layer") if progress else layers:
        for step in SEQUENTIAL_STEPS:
            modules = {name: projection(layer, name) for name in step}
            hessians = _collect_hessians(layer, modules, hidden, cos, sin)
            for name, module in modules.items():
                full_name = f"model.layers.{index}.{name}"
                compressed = compress_linear(module.weight, hessians[name], recipe, act_bits, obs, full_name)
                replace_linear(model, index, name, compressed)
        hidden = run_layer(layer, hidden, cos, sin)
    quantize_embeddings(model, recipe.head_input_bits)
    return model


def compress_linear(weight: torch.Tensor, hessian: torch.Tensor, recipe: Recipe, act_bits: int | None,
                    obs: ObsConfig = ObsConfig(), name: str = "weight") -> QuantLinear:
    """Prune (2:4, if the recipe says so) and GPTQ-quantize one float ``[out, in]`` weight."""
    quant = GroupQuantConfig(bits=recipe.weight_bits, group_size=recipe.group_size,
                             zero_point=recipe.zero_point)
    weight = weight.detach().float()
    if recipe.sparse and recipe.pruning is PruningMethod.SPARSEGPT:
        result = sparsegpt_gptq(weight, hessian, quant, obs, name=name)
    elif recipe.sparse:  # Wanda: ||X_j|| is sqrt(n/2 * H_jj); the common factor does not change the mask
        mask = wanda_2to4_mask(weight, torch.diagonal(hessian).clamp(min=0).sqrt())
        result = gptq_quantize(weight, hessian, quant, obs, mask=mask, name=name)
    else:
        result = gptq_quantize(weight, hessian, quant, obs, name=name)
    return QuantLinear(result.quantized, act_bits, unrounded=result.unrounded)


def _collect_hessians(layer, modules: dict, hidden: torch.Tensor, cos, sin) -> dict[str, torch.Tensor]:
    """Run ``layer`` over ``hidden`` ``[N, T, H]`` and return each module's input Hessian ``[in, in]``."""
    accumulators = {name: HessianAccumulator(m.in_features) for name, m in modules.items()}
    handles = [
        module.register_forward_hook(lambda _m, inputs, _out, acc=accumulators[name]: acc.add_batch(inputs[0]))
        for name, module in modules.items()
    ]
    try:
        run_layer(layer, hidden, cos, sin)
    finally:
        for handle in handles:
            handle.remove()
    return {name: acc.hessian for name, acc in accumulators.items()}


def run_layer(layer, hidden: torch.Tensor, cos, sin) -> torch.Tensor:
    """The layer's output ``[N, T, H]`` for inputs ``[N, T, H]``, in batches of windows."""
    return torch.cat([layer(hidden[i : i + WINDOWS_PER_BATCH], cos, sin)
                      for i in range(0, hidden.shape[0], WINDOWS_PER_BATCH)])
