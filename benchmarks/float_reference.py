"""Float reference model versus transformers, in one process on the same machine.

Usage: python benchmarks/float_reference.py [--model smollm2-135m] [--eval-tokens 2048]
                                            [--new-tokens 64] [--out results/float_reference.json]

Measures: cold load (GGUF -> float weights, writing the cache) and cached load of our reader
next to transformers' own GGUF load; perplexity throughput (ctx 512, non-overlapping windows)
and greedy generation throughput of our model and of transformers' LlamaForCausalLM on the same
tokens. Ratios (ours / transformers) are the figures to quote: absolute times on a shared
machine are noisy, ratios taken in one run are not.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import torch


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def alternate(ours, theirs, rounds: int = 2):
    """Run the contenders in turn, `rounds` times each, so a burst of load on the shared
    machine hits both alike; returns (our value, our best time, their value, their best time)."""
    runs = [(timed(ours), timed(theirs)) for _ in range(rounds)]
    return (runs[0][0][0], min(r[0][1] for r in runs), runs[0][1][0], min(r[1][1] for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default="results/float_reference.json")
    args = parser.parse_args()

    os.environ["LLMFAB_CACHE"] = tempfile.mkdtemp(prefix="llmfab-bench-cache-")
    from transformers import AutoModelForCausalLM

    from llmfab.quant.checkpoint import load_checkpoint
    from llmfab.quant.generate import TorchDecoder, generate
    from llmfab.quant.model import LlamaModel
    from llmfab.quant.perplexity import perplexity, read_text

    cold, cold_s = timed(lambda: load_checkpoint(args.model))
    cached, cached_s = timed(lambda: load_checkpoint(args.model))
    assert not cold.from_cache and cached.from_cache
    ours = LlamaModel.from_checkpoint(cached)
    path = cached.source
    theirs, theirs_load_s = timed(lambda: AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval())

    tokens = cached.tokenizer.encode(read_text(None)[1])[: args.eval_tokens]
    ours_eval = lambda: perplexity(ours, tokens, 512, 512).ppl  # noqa: E731
    theirs_eval = lambda: perplexity(lambda ids: theirs(ids).logits, tokens, 512, 512).ppl  # noqa: E731
    ppl_ours, eval_ours_s, ppl_theirs, eval_theirs_s = alternate(ours_eval, theirs_eval)

    prompt = tokens[:32]
    ours_gen = lambda: list(generate(TorchDecoder(ours), prompt, args.new_tokens))  # noqa: E731
    theirs_gen = lambda: theirs.generate(  # noqa: E731
        torch.tensor([prompt]), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
        do_sample=False, pad_token_id=cached.tokenizer.eos_token_id)
    with torch.no_grad():
        gen_ours, gen_ours_s, out, gen_theirs_s = alternate(ours_gen, theirs_gen)
    gen_theirs = out[0, len(prompt):].tolist()

    result = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "load": {
            "cold_s": round(cold_s, 3), "cached_s": round(cached_s, 3),
            "cached_over_cold": round(cached_s / cold_s, 4),
            "transformers_gguf_s": round(theirs_load_s, 3),
        },
        "eval": {
            "tokens": len(tokens), "ctx": 512, "stride": 512,
            "ours_tokens_per_s": round(len(tokens) / eval_ours_s, 1),
            "transformers_tokens_per_s": round(len(tokens) / eval_theirs_s, 1),
            "speed_ratio": round(eval_theirs_s / eval_ours_s, 3),
            "ppl_ours": ppl_ours, "ppl_transformers": ppl_theirs,
            "ppl_relative_difference": abs(ppl_ours / ppl_theirs - 1),
        },
        "generate": {
            "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
            "ours_tokens_per_s": round(len(gen_ours) / gen_ours_s, 1),
            "transformers_tokens_per_s": round(len(gen_theirs) / gen_theirs_s, 1),
            "speed_ratio": round(gen_theirs_s / gen_ours_s * len(gen_ours) / len(gen_theirs), 3),
            "same_tokens": gen_ours == gen_theirs,
        },
    }
    out_path = pathlib.Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
