"""Lower a compressed-model artifact to Einsum-cascade IR.

`llmfab compile ARTIFACT --emit-ir` prints the lowered cascade of one decoder layer in the IR
text format (docs/ir.md, "Lowering"): RMSNorm, A8 requantization, group-wise W·A linears with
2:4 indices, RoPE, GQA attention with the recipe's Λ filter and KV cache formats, SwiGLU and the
residual adds, every tensor with its storage format. Generating an accelerator program
(`--board`, `-o PROGRAM`) is the scheduler stage, which is not built yet.
"""

from __future__ import annotations

import argparse

HELP = "lower a compressed-model artifact to Einsum-cascade IR (--emit-ir prints one layer)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="folder written by `llmfab quantize ... -o DIR`")
    parser.add_argument("--emit-ir", action="store_true",
                        help="print the lowered cascade of one decoder layer in the IR text format")
    parser.add_argument("--layer", type=int, default=0, help="decoder layer to print (default 0)")
    parser.add_argument("--phase", choices=["prefill", "decode"], default="decode",
                        help="prefill of --tokens tokens, or one decode step after --tokens tokens (default decode)")
    parser.add_argument("--tokens", type=int, default=16,
                        help="prefill length, or tokens already in the stream before the decode step (default 16)")
    parser.add_argument("--softmax", choices=["1pass", "3pass"], default="1pass",
                        help="attention softmax: FlashAttention-2 style 1 pass over the keys, or 3 passes (default 1pass)")
    parser.add_argument("--block", type=int, default=8,
                        help="keys per block of the 1-pass softmax; the largest divisor of the key count "
                        "not above it is used (default 8)")


def run(args: argparse.Namespace) -> int:
    from llmfab.errors import InputError

    if not args.emit_ir:
        raise InputError(
            "only --emit-ir is available: generating an accelerator program (--board, -o PROGRAM) belongs "
            "to the scheduler stage, which is not built yet; run `llmfab compile ARTIFACT --emit-ir` "
            "to print the lowered IR of a layer"
        )
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
