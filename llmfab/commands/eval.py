"""Measure token-level perplexity of a model over a text file.

The text is tokenized whole, optionally truncated to --max-tokens, and scored in windows of
--ctx tokens that advance by --stride; each token is scored once, from the window that first
reaches it. With --stride equal to --ctx the windows do not overlap. The default text is the
public-domain novel shipped with llmfab (Austen's Persuasion), never used for calibration.

--program DIR scores a compiled program instead, through the host runtime on --backend (emu: the
emulator): every window runs as a fresh sequence (prefill in chunks of the program's prefill size),
so the integer numerics, the KV cache formats and Λ attention act as they do when generating."""

from __future__ import annotations

import json
import sys
import time

from llmfab.commands.common import add_artifact_argument, add_model_argument, load_model_or_artifact
from llmfab.host.backend import backend_names

HELP = "perplexity of a model over a text file"


def add_arguments(parser) -> None:
    add_model_argument(parser)
    add_artifact_argument(parser)
    parser.add_argument("--program", metavar="DIR", default=None,
                        help="score a compiled program (`llmfab compile ... -o DIR`) through the host "
                        "runtime on --backend; with --backend reference, --artifact names the artifact "
                        "it was compiled from")
    parser.add_argument("--backend", default=None,
                        help="with --program: what executes it, " + ", ".join(backend_names())
                        + " (default emu; see `llmfab run --help`)")
    parser.add_argument("--text", default=None,
                        help="UTF-8 text file to score (default: the bundled persuasion.txt)")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens between window starts (default: --ctx, no overlap)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="score only the first N tokens of the text (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args) -> int:
    from llmfab.errors import InputError
    from llmfab.progress import progress
    from llmfab.quant.perplexity import perplexity, read_text

    if args.max_tokens is not None and args.max_tokens < 2:
        raise InputError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    text_path, text = read_text(args.text)
    if args.backend is not None and not args.program:
        raise InputError("--backend chooses what runs a compiled program; use it with --program DIR")
    if args.program:
        args.backend = args.backend or "emu"
        tokenizer, model, described = load_program_scorer(args)
    else:
        tokenizer, model, described = load_model_or_artifact(args, quiet=args.json)
    tokens = tokenizer.encode(text)
    total_tokens = len(tokens)
    tokens = tokens[: args.max_tokens] if args.max_tokens else tokens
    stride = args.stride if args.stride is not None else args.ctx
    start = time.perf_counter()
    if args.artifact and not args.program:  # KV cache and Λ attention act only through the cache
        from llmfab.quant.recipe_runtime import cached_logits

        model = cached_logits(model)
    result = perplexity(model, tokens, args.ctx, stride, progress=progress)
    seconds = time.perf_counter() - start
    report = {
        **result.to_dict(),
        **described,
        "text": str(text_path),
        "text_tokens": total_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(len(tokens) / seconds, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{described['model']} on {text_path.name}: perplexity {result.ppl:.4f} "
              f"(nll {result.nll:.5f} nats/token over {result.tokens} tokens, ctx {args.ctx}, "
              f"stride {stride}, {result.windows} windows, {report['tokens_per_s']} tokens/s)")
    sys.stdout.flush()
    return 0


def load_program_scorer(args):
    """(tokenizer, logits function, description dict) of --program on --backend."""
    from llmfab.commands.run import open_from_args
    from llmfab.host.runtime import describe_program, window_logits

    runtime = open_from_args(args.program, args, quiet=args.json)
    return runtime.tokenizer, window_logits(runtime.sequence), {
        **describe_program(runtime.program), "model": args.program, "backend": args.backend}
