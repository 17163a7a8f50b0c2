"""Generate a continuation of a prompt, streaming tokens to stdout as they are produced.

Greedy decoding by default; --temperature > 0 samples, optionally truncated by --top-k and
--top-p, reproducibly with --seed. --chat wraps the prompt in the model's chat template as
one user message. Generation stops at the model's end-of-sequence token or after
--max-new-tokens. Timing goes to stderr, so stdout holds only the text."""

from __future__ import annotations

import sys
import time

from llmfab.commands.common import add_artifact_argument, add_model_argument, load_model_or_artifact

HELP = "generate text from a prompt (streamed)"


def add_sampling_arguments(parser) -> None:
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="stop after this many new tokens (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; 0 means greedy (default 0)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="sample only among the k most likely tokens (0: all; default 0)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="nucleus sampling: smallest set of tokens with this total probability "
                        "(default 1.0: all)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--chat", action="store_true",
                        help="apply the model's chat template to the prompt (as a user message)")
    parser.add_argument("--system", default=None,
                        help="system message for --chat (default: the template's own)")


def add_arguments(parser) -> None:
    add_model_argument(parser)
    add_artifact_argument(parser)
    add_sampling_arguments(parser)


def prompt_ids(tokenizer, args) -> list[int]:
    if not args.chat:
        return tokenizer.encode(args.prompt)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    return tokenizer.encode(tokenizer.apply_chat_template(messages), add_bos=False)


def stream(decoder, tokenizer, args, out=None) -> dict:
    """Generate per `args`, writing text to `out` (stdout) as it comes; returns timing figures."""
    out = out or sys.stdout
    from llmfab.quant.generate import Sampling, generate
    from llmfab.quant.tokenizer import StreamDecoder

    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    ids = prompt_ids(tokenizer, args)
    text = StreamDecoder(tokenizer)
    start = time.perf_counter()
    first = None
    count = 0
    for token in generate(decoder, ids, args.max_new_tokens, sampling, tokenizer.stop_ids):
        if first is None:
            first = time.perf_counter()
        count += 1
        out.write(text.push(token))
        out.flush()
    end = time.perf_counter()
    out.write("\n")
    decode_s = end - first if first is not None else 0.0
    return {
        "prompt_tokens": len(ids),
        "new_tokens": count,
        "prefill_s": (first or end) - start,
        "decode_tokens_per_s": (count - 1) / decode_s if count > 1 and decode_s > 0 else None,
    }


def report_timing(stats: dict) -> None:
    rate = stats["decode_tokens_per_s"]
    print(f"[{stats['prompt_tokens']} prompt tokens in {stats['prefill_s']:.2f} s, "
          f"{stats['new_tokens']} new tokens"
          + (f", {rate:.1f} tokens/s]" if rate else "]"), file=sys.stderr)


def run(args) -> int:
    from llmfab.quant.generate import TorchDecoder

    tokenizer, model, _ = load_model_or_artifact(args)
    report_timing(stream(TorchDecoder(model), tokenizer, args))
    return 0
