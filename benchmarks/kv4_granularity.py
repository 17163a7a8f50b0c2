"""KV4 granularity by measurement: perplexity of SmolLM2 with a packed 4-bit KV cache, keys and
values each per-token or per-channel, against the float cache; dense attention and Λ attention.

Usage: OMP_NUM_THREADS=1 python benchmarks/kv4_granularity.py [--model smollm2-135m]
           [--tokens 2048] [--ctx 512] [--sinks 4] [--window 256] [--out results/kv4_granularity.json]

Every window of ctx tokens is prefilled through a fresh cache (model(ids, model.new_cache())), so
attention reads the stored (dequantized) keys/values. Dense caches quantize post-RoPE keys; the Λ
cache quantizes keys before RoPE (it rotates by slot). Per-channel blocks are 32 tokens; the
unfinished block stays float16 (KIVI-style residual).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch

from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig, kv_bytes_per_token
from llmfab.quant.lambda_attention import disable_lambda_attention, enable_kv4, enable_lambda_attention
from llmfab.quant.model import LlamaModel
from llmfab.quant.perplexity import default_text, perplexity

GRANULARITIES = ("per_token", "per_channel")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--out", default="results/kv4_granularity.json")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.model)
    model = LlamaModel.from_checkpoint(checkpoint)
    tokens = checkpoint.tokenizer.encode(default_text().read_text(encoding="utf-8"))[: args.tokens]

    def run(label, setup, kv4):
        setup()
        start = time.perf_counter()
        result = perplexity(lambda ids: model(ids, model.new_cache()), tokens, args.ctx, args.ctx)
        row = dict(label=label, ppl=result.ppl, scored=result.tokens, seconds=time.perf_counter() - start,
                   kv_bytes_per_token=kv_bytes_per_token(model.config, kv4))
        print(json.dumps(row), flush=True)
        return row

    rows = [run("dense float", lambda: disable_lambda_attention(model), None)]
    for keys in GRANULARITIES:
        for values in GRANULARITIES:
            kv4 = Kv4CacheConfig.named(keys, values)
            rows.append(run(f"dense K {keys} V {values}", lambda: enable_kv4(model, kv4), kv4))
    lam = f"lambda S={args.sinks} W={args.window}"
    rows.append(run(f"{lam} float", lambda: enable_lambda_attention(model, args.sinks, args.window), None))
    for keys in GRANULARITIES:
        for values in GRANULARITIES:
            kv4 = Kv4CacheConfig.named(keys, values)
            rows.append(run(f"{lam} K {keys} V {values}",
                            lambda: enable_lambda_attention(model, args.sinks, args.window, kv4), kv4))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2))


if __name__ == "__main__":
    with torch.no_grad():
        main()
