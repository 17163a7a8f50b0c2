"""Time a program on the cycle-level performance model.

`llmfab simulate PROGRAM` times a program folder written by `llmfab compile`; `llmfab simulate
--model llama-2-7b --preset accllm --board u280` compiles a published model shape without weights
first (a Llama-2-7B compile takes 2-20 s, depending on the machine's load). The model runs every
instruction of the decode routine (and of sampled prefill chunks) on the engine's LOAD, COMPUTE and
STORE units with the program's dependency tokens, HBM bursts and per-pseudo-channel efficiency, and
prints decode tokens/s at --context, prefill latency for --prompt-tokens, HBM bytes per token,
bandwidth and compute utilisation, the bounds, power and tokens per joule, and cycles per layer and
per instruction class. Formulas and constants: docs/performance.md.
"""

from __future__ import annotations

import argparse

HELP = "cycle-level performance of a program (or of a model shape) on the engine"

DEFAULT_CONTEXT = 1024
DEFAULT_PROMPT = 512


def add_datapath_argument(parser: argparse.ArgumentParser) -> None:
    """`--datapath rtl|target` (sim/op_timing.Datapath), shared by `simulate` and `report`."""
    parser.add_argument("--datapath", choices=("rtl", "target"), default="rtl",
                        help="COMPUTE timing: 'rtl' the engine as built (each sequencer's measured cycle formula, "
                        "the default), 'target' the datapath the design aims at (attention lanes shared by every "
                        "head, GEMV lanes fed at the HBM rate; not built yet, docs/performance.md)")


def datapath_of(args: argparse.Namespace):
    from llmfab.sim.op_timing import Datapath

    return Datapath(args.datapath)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", nargs="?", help="program folder written by `llmfab compile ... -o PROGRAM`")
    parser.add_argument("--model", help="instead of PROGRAM: a model shape (llama-2-7b, llama-2-13b, llama-3-8b, "
                        "smollm2-135m) or a JSON model config, compiled without weights")
    parser.add_argument("--preset", default="accllm",
                        help="compression recipe preset for --model (w8a8kv8, w4a8kv4, w2a8kv4, accllm; default accllm)")
    parser.add_argument("--board", help="board for --model (u280, u55c, vhk158; default: the engine preset's board)")
    parser.add_argument("--engine", default="u280-accllm",
                        help="engine preset for --model (docs/hardware.md; default u280-accllm, the engine sized "
                        "for Llama-2-7B)")
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT,
                        help=f"tokens already in the cache when the decode step runs (default {DEFAULT_CONTEXT})")
    parser.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT,
                        help=f"prompt length for the prefill figures (default {DEFAULT_PROMPT})")
    add_datapath_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def load_timed_program(args: argparse.Namespace):
    """The TimedProgram the options name (a folder, or a shape-only compile of --model)."""
    from llmfab.errors import InputError

    if (args.program is None) == (args.model is None):
        raise InputError("give either a PROGRAM folder or --model NAME (with --preset/--board/--engine), not both "
                         "and not neither")
    from llmfab.sim.cycle_program import program_from_folder, program_from_model

    if args.program is not None:
        return program_from_folder(args.program)
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.quant.model_shapes import resolve_model_shape
    from llmfab.quant.recipe import Recipe

    config = resolve_model_shape(args.model)
    recipe = Recipe.from_preset(args.preset)
    hardware = HardwareConfig.from_preset(args.engine, board=args.board)
    return program_from_model(config, recipe, hardware, name=config.name or args.model)


def run(args: argparse.Namespace) -> int:
    import json

    from llmfab.errors import InputError

    if args.context < 0:
        raise InputError(f"--context {args.context}: the number of cached tokens cannot be negative")
    if args.prompt_tokens < 1:
        raise InputError(f"--prompt-tokens {args.prompt_tokens}: a prompt has at least one token")
    from llmfab.sim.performance import Simulator, summary

    program = load_timed_program(args)
    result = summary(program, args.context, args.prompt_tokens, Simulator(program, datapath=datapath_of(args)))
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        from llmfab.sim.report_text import format_summary

        print(format_summary(result))
    return 0
