"""A8-only effect of SmoothQuant smoothing on a float model: perplexity for a sweep of α.

Weights stay float; per-token int8 fake-quant is applied to every decoder projection's input (and,
in a second column, to the LM head's input too). Activation maxima come from the default
calibration windows (bundled Emma excerpt, 32 x 512 tokens) of the unsmoothed model, once.

    OMP_NUM_THREADS=1 python benchmarks/smoothing_sweep.py --alphas 0.4 0.5 0.6 0.7 \
        --max-tokens 2048 --json results/smoothing_sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from llmfab.quant.calibrate import calibration_windows
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.model import LlamaModel, iter_linears
from llmfab.quant.perplexity import perplexity, read_text
from llmfab.quant.qlinear import fake_quant_per_token
from llmfab.quant.recipe import Recipe
from llmfab.quant.smoothing import collect_input_maxima, smooth_layer


def add_a8(model: LlamaModel, head: bool, bits: int = 8) -> None:
    """Per-token fake-quant on every decoder projection's input (and the LM head's if ``head``)."""
    modules = [module for _, _, module in iter_linears(model)] + ([model.lm_head] if head else [])
    for module in modules:
        module.register_forward_pre_hook(lambda _m, inputs: (fake_quant_per_token(inputs[0], bits),))


def measure(checkpoint, tokens, ctx: int, alpha: float | None, maxima, a8: bool, head: bool) -> float:
    """Perplexity of a fresh float model, smoothed with ``alpha`` (None: not), with A8 as asked."""
    model = LlamaModel.from_checkpoint(checkpoint)
    if alpha is not None:
        for layer, layer_maxima in zip(model.model.layers, maxima):
            smooth_layer(layer, layer_maxima, alpha)
    if a8:
        add_a8(model, head)
    return perplexity(model, tokens, ctx, ctx).ppl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    checkpoint = load_checkpoint(args.model)
    tokens = checkpoint.tokenizer.encode(read_text(None)[1])[: args.max_tokens]
    start = time.perf_counter()
    maxima = collect_input_maxima(LlamaModel.from_checkpoint(checkpoint),
                                  calibration_windows(checkpoint.tokenizer, Recipe.from_preset("w8a8kv8")))
    print(f"maxima collected in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    float_ppl = measure(checkpoint, tokens, args.ctx, None, maxima, a8=False, head=False)
    rows = []
    for alpha in [None, *args.alphas]:
        row = {"alpha": alpha}
        for head in (False, True):
            ppl = measure(checkpoint, tokens, args.ctx, alpha, maxima, a8=True, head=head)
            row["a8_with_head" if head else "a8_without_head"] = {"ppl": ppl, "ratio": ppl / float_ppl}
        rows.append(row)
        print(f"alpha {alpha}: A8 without head {row['a8_without_head']['ratio']:.4f}, "
              f"with head {row['a8_with_head']['ratio']:.4f}", file=sys.stderr)
    report = {"model": args.model, "ctx": args.ctx, "tokens": len(tokens), "float_ppl": float_ppl, "rows": rows}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
