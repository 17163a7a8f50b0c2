"""KV-cache choices on a compressed artifact: perplexity with a float cache and with the packed cache
at each requested width, keys and values each per-token or per-channel; optionally also with the
LM head's input left unquantized (A16 head instead of per-token A8).

Usage: OMP_NUM_THREADS=1 python benchmarks/kv_cache_choices.py --artifact results/artifacts/w8a8kv8
           [--bits 8] [--keys per_token,per_channel] [--values per_token] [--head-float]
           [--ctx 512] [--max-tokens 4096] [--out results/kv_cache_choices.json]

The artifact's weights and activations stay as stored; only the recipe's KV fields change
(``apply_kv_and_attention`` with a replaced recipe), so every row scores the same tokens of the
bundled persuasion.txt with the same model, as ``llmfab eval --artifact`` does. Each row takes
about as long as one ``llmfab eval`` over the same tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

import torch

from llmfab.quant.artifact import load_artifact
from llmfab.quant.kv4 import KvGranularity
from llmfab.quant.perplexity import perplexity, read_text
from llmfab.quant.recipe import FLOAT_BITS, kv_bytes_per_token
from llmfab.quant.recipe_runtime import apply_kv_and_attention, cached_logits


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, help="artifact folder written by llmfab quantize")
    parser.add_argument("--bits", default="8", help="comma list of packed KV widths to try (4, 8)")
    parser.add_argument("--keys", default="per_token,per_channel", help="comma list of key granularities")
    parser.add_argument("--values", default="per_token,per_channel", help="comma list of value granularities")
    parser.add_argument("--head-float", action="store_true",
                        help="also run every row with the LM head's input unquantized (A16 head)")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="score the first N tokens (default 4096)")
    parser.add_argument("--out", default="results/kv_cache_choices.json", help="JSON output path")
    return parser.parse_args()


def write_json(path: pathlib.Path, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


@torch.no_grad()
def main() -> None:
    args = parse_args()
    artifact = load_artifact(args.artifact)
    model, base = artifact.model, artifact.recipe
    text_path, text = read_text(None)
    tokens = artifact.tokenizer.encode(text)[: args.max_tokens]
    caches = [dict(kv_bits=FLOAT_BITS)] + [
        dict(kv_bits=int(bits), kv_key_granularity=KvGranularity(keys), kv_value_granularity=KvGranularity(values))
        for bits in args.bits.split(",") for keys in args.keys.split(",") for values in args.values.split(",")
    ]
    stored_head_act = model.lm_head.act_bits
    heads = [stored_head_act] + ([None] if args.head_float and stored_head_act is not None else [])
    rows = []
    for head_act in heads:
        model.lm_head.act_bits = head_act
        for fields in caches:
            recipe = dataclasses.replace(base, **fields)
            described = apply_kv_and_attention(model, recipe)
            start = time.perf_counter()
            result = perplexity(cached_logits(model), tokens, args.ctx, args.ctx)
            row = dict(cache=described, kv_bits=recipe.kv_bits, keys=recipe.kv_key_granularity.value,
                       values=recipe.kv_value_granularity.value,
                       head_act_bits=FLOAT_BITS if head_act is None else head_act, ppl=result.ppl,
                       scored=result.tokens, kv_bytes_per_token=kv_bytes_per_token(artifact.config, recipe),
                       seconds=round(time.perf_counter() - start, 1))
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    write_json(pathlib.Path(args.out), dict(artifact=args.artifact, recipe=base.to_dict(), text=str(text_path),
                                            ctx=args.ctx, max_tokens=args.max_tokens, rows=rows))


if __name__ == "__main__":
    main()
