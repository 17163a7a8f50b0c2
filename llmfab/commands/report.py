"""Write a performance report folder: PNG plots and a markdown summary from the cycle model.

`llmfab report -o DIR --model llama-2-7b --preset accllm --board u280 --engine u280-accllm`
compiles the model shape without weights, times it and writes DIR/summary.md with the headline
figures and five plots: roofline (achieved against HBM and compute bounds), time per layer and per
instruction class, decode tokens/s against context from 1k to 128k for Λ and dense attention,
prefill against prompt length, and a design sweep of the prefill PE array size against the clock.
A Llama-2-7B report takes about a minute.
"""

from __future__ import annotations

import argparse

from .simulate import add_datapath_argument, datapath_of

HELP = "write a folder of performance plots and a markdown summary (cycle model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="report folder to write (created or replaced)")
    parser.add_argument("--model", default="llama-2-7b",
                        help="model shape (llama-2-7b, llama-2-13b, llama-3-8b, smollm2-135m) or a JSON model "
                        "config (default llama-2-7b)")
    parser.add_argument("--preset", default="accllm",
                        help="compression recipe preset (w8a8kv8, w4a8kv4, w2a8kv4, accllm; default accllm)")
    parser.add_argument("--board", help="board (u280, u55c, vhk158; default: the engine preset's board)")
    parser.add_argument("--engine", default="u280-accllm",
                        help="engine preset (docs/hardware.md; default u280-accllm)")
    parser.add_argument("--context", type=int, default=1024,
                        help="context of the headline decode figure and the design sweep (default 1024)")
    parser.add_argument("--prompt-tokens", type=int, default=512,
                        help="prompt length of the headline prefill figure (default 512)")
    add_datapath_argument(parser)


def run(args: argparse.Namespace) -> int:
    from llmfab.errors import InputError

    if args.context < 0 or args.prompt_tokens < 1:
        raise InputError("--context must be >= 0 and --prompt-tokens >= 1")
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.quant.model_shapes import resolve_model_shape
    from llmfab.quant.recipe import Recipe
    from llmfab.sim.report import write_report

    config = resolve_model_shape(args.model)
    recipe = Recipe.from_preset(args.preset)
    hardware = HardwareConfig.from_preset(args.engine, board=args.board)
    data = write_report(args.output, config, recipe, hardware, args.context, args.prompt_tokens, args.engine,
                        datapath=datapath_of(args))
    print(f"{data['model']} {data['recipe']} on {data['board']} ({args.engine}, {data['datapath']} datapath): decode {data['decode_tokens_per_s']:,.1f} "
          f"tokens/s at context {data['context']:,}, prefill {data['prefill_tokens_per_s']:,.1f} tokens/s, "
          f"{data['tokens_per_joule']:.2f} tokens/J")
    print(f"wrote {args.output}/summary.md and 5 plots")
    return 0
