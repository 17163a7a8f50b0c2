"""Compile a compressed-model artifact into an accelerator program, or print its lowered IR.

`llmfab compile ARTIFACT --board u280 [--engine u280-default] -o PROGRAM` runs the scheduler
(compiler/scheduler.py): it tiles every linear layer for the engine's buffers, places weights,
tables and the KV cache across the HBM pseudo-channels, emits the prefill and decode routines
(docs/isa.md) and writes the program folder (docs/program_format.md), printing what it chose.
`--shape-only --model-config NAME_OR_JSON` compiles a model config without weights (no memory
images) for studies of models too large to quantize here.

`llmfab compile ARTIFACT --emit-ir` prints the lowered cascade of one decoder layer in the IR
text format (docs/ir.md, "Lowering").
"""

from __future__ import annotations

import argparse

HELP = "compile a compressed artifact to an accelerator program (-o), or print its lowered IR (--emit-ir)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", nargs="?",
                        help="folder written by `llmfab quantize ... -o DIR` (omit with --shape-only)")
    parser.add_argument("--board", help="target board for a program, e.g. u280 (default: the engine preset's board)")
    parser.add_argument("--engine", default="u280-default",
                        help="engine preset (see docs/hardware.md; default u280-default)")
    parser.add_argument("-o", "--output", help="program folder to write")
    parser.add_argument("--shape-only", action="store_true",
                        help="compile from --model-config without weights: instructions and placement, no memory images")
    parser.add_argument("--model-config",
                        help="with --shape-only: a model name (e.g. llama-2-7b) or a JSON ModelConfig file")
    parser.add_argument("--preset", default="accllm",
                        help="with --shape-only: the compression recipe preset to assume (default accllm)")
    parser.add_argument("--emit-ir", action="store_true",
                        help="print the lowered cascade of one decoder layer in the IR text format")
    parser.add_argument("--layer", type=int, default=0, help="--emit-ir: decoder layer to print (default 0)")
    parser.add_argument("--phase", choices=["prefill", "decode"], default="decode",
                        help="--emit-ir: prefill of --tokens tokens, or one decode step after --tokens tokens "
                        "(default decode)")
    parser.add_argument("--tokens", type=int, default=16,
                        help="--emit-ir: prefill length, or tokens already in the stream before the decode step "
                        "(default 16)")
    parser.add_argument("--softmax", choices=["1pass", "3pass"], default="1pass",
                        help="--emit-ir: attention softmax, FlashAttention-2 style 1 pass over the keys, or 3 passes "
                        "(default 1pass)")
    parser.add_argument("--block", type=int, default=8,
                        help="--emit-ir: keys per block of the 1-pass softmax; the largest divisor of the key count "
                        "not above it is used (default 8)")


def run(args: argparse.Namespace) -> int:
    from llmfab.errors import InputError

    if args.emit_ir:
        if args.artifact is None:
            raise InputError("--emit-ir needs an ARTIFACT folder (written by llmfab quantize)")
        return emit_ir(args)
    if not args.output:
        raise InputError("say where to write the program with -o PROGRAM (or print the IR with --emit-ir)")
    if args.shape_only:
        if not args.model_config:
            raise InputError("--shape-only needs --model-config NAME_OR_JSON (e.g. llama-2-7b)")
        if args.artifact is not None:
            raise InputError("--shape-only compiles a model config; drop the ARTIFACT argument or --shape-only")
    elif args.artifact is None:
        raise InputError("give the ARTIFACT folder to compile (or --shape-only --model-config NAME)")
    return compile_program(args)


def compile_program(args: argparse.Namespace) -> int:
    from llmfab.boards.hardware import HardwareConfig
    from llmfab.compiler.model_plan import ModelPlan, WeightSource
    from llmfab.compiler.program import write_program
    from llmfab.compiler.scheduler import compile_model, format_report

    hardware = HardwareConfig.from_preset(args.engine, board=args.board)
    if args.shape_only:
        from llmfab.quant.model_shapes import resolve_model_shape
        from llmfab.quant.recipe import Recipe

        config = resolve_model_shape(args.model_config)
        recipe = Recipe.from_preset(args.preset)
        name = config.name or str(args.model_config)
        weights, tokenizer_json = None, None
    else:
        from llmfab.quant.artifact import load_artifact

        artifact = load_artifact(args.artifact)
        config, recipe = artifact.config, artifact.recipe
        name = artifact.manifest.get("model_name") or config.name or "model"
        weights, tokenizer_json = WeightSource(artifact.model), artifact.tokenizer.to_json()
    compiled = compile_model(ModelPlan.build(config, recipe, name), hardware, weights)
    write_program(args.output, compiled, tokenizer_json, name, args.engine)
    kind = "shape-only program (no memory images)" if args.shape_only else "program"
    print(f"# {name}, recipe {recipe.name} -> {kind} for board {hardware.board.name}, engine {args.engine}")
    print(format_report(compiled.report))
    print(f"wrote {args.output}")
    return 0


def emit_ir(args: argparse.Namespace) -> int:
    from llmfab.errors import InputError

    if args.tokens < (1 if args.phase == "prefill" else 0):
        raise InputError(f"--tokens {args.tokens}: a {args.phase} needs at least "
                         f"{1 if args.phase == 'prefill' else 0} tokens")
    if args.block < 1:
        raise InputError(f"--block {args.block} must be at least 1")

    from llmfab.compiler.lowering import LoweringOptions, Phase, lower_layer
    from llmfab.compiler.lowering_attention import Softmax
    from llmfab.compiler.printer import print_cascade
    from llmfab.quant.artifact import load_artifact

    artifact = load_artifact(args.artifact)
    layers = artifact.config.num_layers
    if not 0 <= args.layer < layers:
        raise InputError(f"--layer {args.layer} does not exist; {args.artifact} has layers 0..{layers - 1}")
    if artifact.recipe.lambda_attention is False and args.tokens + 1 > artifact.config.max_position_embeddings:
        raise InputError(f"--tokens {args.tokens} exceeds the model's context of {artifact.config.max_position_embeddings}")
    options = LoweringOptions(Phase(args.phase), args.tokens, Softmax(args.softmax), args.block)
    lowered = lower_layer(artifact.model, artifact.recipe, args.layer, options)
    print(f"# {artifact.manifest.get('model_name') or artifact.config.name or 'model'}, recipe "
          f"{artifact.recipe.name}: layer {args.layer}, {args.phase}, T = {args.tokens}, {args.softmax} softmax")
    print(print_cascade(lowered.cascade), end="")
    return 0
