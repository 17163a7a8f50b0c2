"""Accuracy of the integer numerics (docs/numerics.md): perplexity and next-token top-1 agreement of
the integer reference model against the float fake-quant model holding the same integer weights.

Usage: OMP_NUM_THREADS=1 python benchmarks/numerics_accuracy.py [--model smollm2-135m]
           [--tokens 2048] [--ctx 512] [--bits 4] [--group-size 64] [--sparse] [--kv float,kv4]
           [--sinks S --window W] [--out results/numerics_accuracy.json]

Weights: round-to-nearest min-max group quantization of every decoder projection
(quantize_groupwise), 8-bit per-row embeddings / LM head, A8 per-token inputs. Both models see
the same windows of ``ctx`` tokens (stride ``ctx``), each prefilled through a fresh cache: KV4 is
the quant default (per-channel keys in blocks of 32, per-token values) on both sides, or none.
With ``--sinks/--window`` both models run Λ-shaped attention (S sinks + a W-token ring).

For scale, two twins of the fake-quant model are scored against it as well: one with its
embedding rows perturbed by 1e-6 relative, and the model itself with its matrix products
accumulated in float64 (`float64_products`): how far two valid float implementations of one model
part through A8 rounding, the ceiling of the integer model's top-1 agreement.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig
from llmfab.quant.lambda_attention import disable_lambda_attention, enable_kv4, enable_lambda_attention
from llmfab.quant.model import LlamaModel
from llmfab.quant.perplexity import default_text, windows
from llmfab.sim.fixed_point import ACT32
from llmfab.sim.integer_model import IntegerModel
from llmfab.sim.integer_weights import integer_model_from_torch, round_to_nearest_model
from llmfab.sim.kv_ring import LambdaShape


def log_probs(logits: np.ndarray) -> np.ndarray:
    """Next-token log-probabilities of float64 ``logits`` [n, vocab]."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nll_sum(log_p: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood of ``targets`` [n] under ``log_p`` [n, vocab] (log_probs)."""
    return float(-log_p[np.arange(len(targets)), targets].sum())


def kl_sum(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """Summed KL(p || q) in nats of next-token log-probabilities [n, vocab] (log_probs): how far
    ``q`` moves the whole distribution, not only its top-1 token."""
    return float((np.exp(log_p) * (log_p - log_q)).sum())


PERTURBATION = 1e-6  # relative noise on the embedding rows of the perturbed fake-quant copy


def perturbed_copy(model: LlamaModel, seed: int = 0) -> LlamaModel:
    """The fake-quant model with its embedding rows (not the LM head) scaled by 1 + 1e-6 * N(0, 1):
    how far two equally valid implementations drift apart through A8 rounding (the chaos floor)."""
    twin = copy.deepcopy(model)
    embed = twin.model.embed_tokens
    noise = torch.randn(embed.weight.shape, generator=torch.Generator().manual_seed(seed))
    embed.weight = embed.weight * (1 + PERTURBATION * noise)
    return twin


@contextlib.contextmanager
def float64_products():
    """Inside the block every ``F.linear`` (the fake-quant projections and the LM head) accumulates
    in float64 and rounds its result to the input's dtype once. The same fake-quant model, changed
    only in float32 rounding (about 1e-7 relative per product): where its top-1 tokens part from
    the plain model's is the agreement ceiling of any implementation that is not bit-identical."""
    plain = F.linear

    def accumulated(x, weight, bias=None):
        bias = None if bias is None else bias.double()
        return plain(x.double(), weight.double(), bias).to(x.dtype)

    F.linear = accumulated
    try:
        yield
    finally:
        F.linear = plain


def compare(model: LlamaModel, integer: IntegerModel, tokens: list[int], ctx: int,
            float_model: LlamaModel) -> dict:
    """Perplexities, top-1 agreement and logit error of the two models over the same windows, with
    the unquantized model's, a perturbed fake-quant copy's and the float64-products fake-quant
    model's agreement for scale."""
    ids = np.asarray(tokens, dtype=np.int64)
    twin = perturbed_copy(model)
    twins = ("integer", "twin", "float64")  # compared with the fake-quant model
    totals = dict(fake_quant_nll=0.0, scored=0, integer_vs_float=0, fake_quant_vs_float=0,
                  float_seconds=0.0, integer_seconds=0.0,
                  **{f"{name}_{figure}": 0.0 for name in twins for figure in ("nll", "kl", "agree")})
    worst_relative = 0.0
    for w in windows(len(tokens), ctx, ctx):
        window = ids[w.begin : w.end]
        start = time.perf_counter()
        batch = torch.from_numpy(window)[None]
        with torch.no_grad():
            reference = model(batch, model.new_cache())[0].double().numpy()
            perturbed = twin(batch, twin.new_cache())[0].double().numpy()
            with float64_products():
                accumulated = model(batch, model.new_cache())[0].double().numpy()
            unquantized = float_model(batch)[0].double().numpy()
        totals["float_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        emulated = ACT32.to_float(integer.forward(window))
        totals["integer_seconds"] += time.perf_counter() - start
        scored = slice(len(window) - w.scored - 1, len(window) - 1)
        targets = ids[w.end - w.scored : w.end]
        log_p = {name: log_probs(logits[scored]) for name, logits in
                 (("fake_quant", reference), ("integer", emulated), ("twin", perturbed), ("float64", accumulated))}
        top = {name: values.argmax(-1) for name, values in log_p.items()}
        totals["fake_quant_nll"] += nll_sum(log_p["fake_quant"], targets)
        for name in twins:
            totals[f"{name}_nll"] += nll_sum(log_p[name], targets)
            totals[f"{name}_kl"] += kl_sum(log_p["fake_quant"], log_p[name])
            totals[f"{name}_agree"] += int((top["fake_quant"] == top[name]).sum())
        top_float = unquantized[scored].argmax(-1)
        totals["integer_vs_float"] += int((top["integer"] == top_float).sum())
        totals["fake_quant_vs_float"] += int((top["fake_quant"] == top_float).sum())
        totals["scored"] += w.scored
        error = np.abs(emulated - reference).max(axis=-1) / np.abs(reference).max(axis=-1)
        worst_relative = max(worst_relative, float(error.max()))
    n = totals["scored"]
    ppl_float = math.exp(totals["fake_quant_nll"] / n)
    ppl_integer = math.exp(totals["integer_nll"] / n)
    return dict(ppl_fake_quant=ppl_float, ppl_integer=ppl_integer,
                ppl_relative_change=ppl_integer / ppl_float - 1, top1_agreement=totals["integer_agree"] / n,
                mean_kl_nats=totals["integer_kl"] / n,
                max_relative_logit_error=worst_relative, scored_tokens=n,
                perturbed_fake_quant=dict(relative_embedding_noise=PERTURBATION,
                                          ppl=math.exp(totals["twin_nll"] / n),
                                          top1_agreement=totals["twin_agree"] / n,
                                          mean_kl_nats=totals["twin_kl"] / n),
                float64_products_fake_quant=dict(ppl=math.exp(totals["float64_nll"] / n),
                                                 top1_agreement=totals["float64_agree"] / n,
                                                 mean_kl_nats=totals["float64_kl"] / n),
                top1_vs_unquantized=dict(integer=totals["integer_vs_float"] / n,
                                         fake_quant=totals["fake_quant_vs_float"] / n),
                float_seconds=totals["float_seconds"], integer_seconds=totals["integer_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--sparse", action="store_true", help="2:4 magnitude pruning before quantization")
    parser.add_argument("--kv", default="kv4,float", help="comma list of cache kinds: kv4, float")
    parser.add_argument("--sinks", type=int, help="Λ attention: attention sinks S (with --window)")
    parser.add_argument("--window", type=int, help="Λ attention: window W (with --sinks); default dense")
    parser.add_argument("--out", default="results/numerics_accuracy.json")
    args = parser.parse_args()
    shape = None if args.window is None else LambdaShape(args.sinks or 0, args.window)

    checkpoint = load_checkpoint(args.model)
    float_model = LlamaModel.from_checkpoint(checkpoint)
    model = round_to_nearest_model(LlamaModel.from_checkpoint(checkpoint), args.bits, args.group_size,
                                   act_bits=8, sparse=args.sparse)
    tokens = checkpoint.tokenizer.encode(default_text().read_text(encoding="utf-8"))[: args.tokens]
    rows = []
    for kind in args.kv.split(","):
        kv4 = Kv4CacheConfig() if kind == "kv4" else None
        if shape is not None:
            enable_lambda_attention(model, shape.sinks, shape.window, kv4=kv4)
        elif kv4 is None:
            disable_lambda_attention(model)
        else:
            enable_kv4(model, kv4)
        row = dict(model=args.model, weights=f"W{args.bits} g{args.group_size}" + (" 2:4" if args.sparse else ""),
                   activations="A8 per token", cache=kind, ctx=args.ctx, tokens=len(tokens),
                   attention="dense" if shape is None else f"Λ {shape.sinks} sinks + {shape.window} window",
                   **compare(model, integer_model_from_torch(model, kv4, shape), tokens, args.ctx, float_model))
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(command="OMP_NUM_THREADS=1 python benchmarks/numerics_accuracy.py "
                                   + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                              if k not in ("sparse", "out") and v is not None)
                                   + (" --sparse" if args.sparse else ""),
                                   rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
