"""Perplexity by position over one long stream (beyond the trained context), Λ vs dense attention.

Usage: OMP_NUM_THREADS=1 python benchmarks/lambda_long_stream.py --mode lambda|dense
           [--model smollm2-135m] [--text FILE (default: bundled persuasion.txt)] [--tokens 16384]
           [--sinks 4] [--window 1024] [--chunk 512] [--bucket 1024] [--kv4]
           [--out results/long_stream_MODE.json]

The first --tokens tokens of the text are fed through ONE cache in chunks of --chunk tokens
(prefill-style), so token i is predicted from everything the cache holds at i: all earlier tokens
for dense (absolute RoPE positions up to --tokens), sinks + last W for Λ (positions < S+W).
Writes per-bucket perplexity, and first/last 2,048-token perplexity. Dense cost grows as
tokens^2 (6 min single-threaded for 10,240 tokens, ~13 min estimated for 16,384); Λ grows
linearly (7 min for 16,384). --kv4 stores the Λ sinks and ring (or the dense cache) in 4 bits
with the default Kv4CacheConfig.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig
from llmfab.quant.lambda_attention import enable_kv4, enable_lambda_attention
from llmfab.quant.model import LlamaModel
from llmfab.quant.perplexity import read_text


def stream_nll(model, ids: torch.Tensor, chunk: int, progress=print) -> torch.Tensor:
    """NLL [n-1] of tokens 1..n-1 of ids [n], fed through one cache in chunks."""
    cache = model.new_cache()
    nll, carry = [], None
    start = time.perf_counter()
    for begin in range(0, ids.numel(), chunk):
        logits = model(ids[begin : begin + chunk].unsqueeze(0), cache)[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        if carry is not None:  # the previous chunk's last position predicts this chunk's first token
            nll.append(-carry[ids[begin]].unsqueeze(0))
        targets = ids[begin + 1 : begin + chunk]
        nll.append(-logprobs[: targets.numel()].gather(1, targets.unsqueeze(1)).squeeze(1))
        carry = logprobs[-1]
        progress(f"{begin + chunk} tokens, {time.perf_counter() - start:.0f} s")
    return torch.cat(nll)


def ppl(nll: torch.Tensor) -> float:
    return math.exp(nll.double().mean().item())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("lambda", "dense"), required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default=None, help="UTF-8 text (default: the bundled persuasion.txt)")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--bucket", type=int, default=1024)
    parser.add_argument("--kv4", action="store_true", help="4-bit cache (default Kv4CacheConfig)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.model)
    model = LlamaModel.from_checkpoint(checkpoint)
    tokens = checkpoint.tokenizer.encode(read_text(args.text)[1])
    ids = torch.tensor(tokens[: args.tokens])
    kv4 = Kv4CacheConfig() if args.kv4 else None
    if args.mode == "lambda":
        enable_lambda_attention(model, args.sinks, args.window, kv4=kv4, chunk=args.chunk)
    elif kv4 is not None:
        enable_kv4(model, kv4)
    nll = stream_nll(model, ids, args.chunk, progress=lambda m: print(m, flush=True))
    buckets = [dict(first_position=b, ppl=ppl(nll[b : b + args.bucket]))
               for b in range(0, nll.numel(), args.bucket)]
    result = dict(args=vars(args), trained_context=model.config.max_position_embeddings,
                  buckets=buckets, first_2048=ppl(nll[:2048]), last_2048=ppl(nll[-2048:]))
    result["last_over_first"] = result["last_2048"] / result["first_2048"]
    out = pathlib.Path(args.out or f"results/long_stream_{args.mode}{'_kv4' if args.kv4 else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "buckets"}), flush=True)
    for b in buckets:
        print(b, flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
