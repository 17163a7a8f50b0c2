"""Run the main job end to end on one model and print its results.

Today the flow is: ingest the checkpoint (through the float cache), report its perplexity on
the bundled text (ctx 512, stride 512, first 8,192 tokens) and generate a short chat answer.
Later stages (quantize, compile, simulate, run) join this command as they land."""

from __future__ import annotations

import argparse
import time

from llmfab.commands.common import add_model_argument, load_float_model

HELP = "run the main job end to end on a model and print the results"


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--max-tokens", type=int, default=8192,
                        help="tokens of the bundled text to score (default 8192)")
    parser.add_argument("--prompt", default="Write one sentence about the sea.",
                        help="chat prompt for the generation step")
    parser.add_argument("--max-new-tokens", type=int, default=48,
                        help="tokens to generate (default 48)")


def run(args) -> int:
    from llmfab.commands.generate import report_timing, stream
    from llmfab.progress import progress
    from llmfab.quant.generate import TorchDecoder
    from llmfab.quant.perplexity import perplexity, read_text

    print(f"== 1. ingest {args.model}")
    checkpoint, model = load_float_model(args.model, not args.no_cache)
    c = checkpoint.config
    print(f"   {checkpoint.source}\n   {c.num_layers} layers, hidden {c.hidden_size}, heads "
          f"{c.num_heads}/{c.num_kv_heads} (q/kv), vocab {c.vocab_size}, context "
          f"{c.max_position_embeddings}")

    text_path, text = read_text(None)
    tokens = checkpoint.tokenizer.encode(text)[: args.max_tokens]
    print(f"== 2. perplexity on {text_path.name} (first {len(tokens)} tokens, ctx 512, stride 512)")
    start = time.perf_counter()
    result = perplexity(model, tokens, 512, 512, progress=progress)
    print(f"   float model: ppl {result.ppl:.4f} over {result.tokens} scored tokens "
          f"({len(tokens) / (time.perf_counter() - start):.0f} tokens/s)")

    print(f"== 3. generate (chat): {args.prompt}")
    gen_args = argparse.Namespace(prompt=args.prompt, chat=True, system=None,
                                  max_new_tokens=args.max_new_tokens, temperature=0.0,
                                  top_k=0, top_p=1.0, seed=None)
    report_timing(stream(TorchDecoder(model), checkpoint.tokenizer, gen_args))
    return 0
