"""Run the main job end to end on one model and print its results.

1. ingest the checkpoint (through the float cache) and answer a chat prompt with the float model;
2. quantize it with a fast recipe (default w4a8kv4 with 4 calibration windows of 256 tokens and
   none of the preset's training unless --train: its block reconstruction adds ~7 minutes);
3. compile the artifact for the U280 (`llmfab compile --board u280`);
4. run the program on the emulator: the same chat prompt, streamed;
5. perplexity of the float, fake-quant and emulated models on the first --ppl-tokens tokens of the
   bundled text (Austen's Persuasion, ctx 512, stride 512).

The artifact and program go to --workdir (kept, and reused by a later run with the same settings),
or to a temporary folder removed at the end."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from llmfab.commands.common import add_model_argument

HELP = "run the main job end to end on a model and print the results"
PPL_CTX = 512


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--preset", default="w4a8kv4",
                        help="compression preset (default w4a8kv4; accllm adds 2:4, W2 and Λ attention)")
    parser.add_argument("--calib-samples", type=int, default=4,
                        help="calibration windows for the quantizer (default 4; presets use 32)")
    parser.add_argument("--calib-seq-len", type=int, default=256,
                        help="tokens per calibration window (default 256)")
    parser.add_argument("--train", action="store_true",
                        help="keep the preset's block reconstruction and QAT steps (default: skip them, so the "
                        "demo takes minutes; the presets' measured quality needs them)")
    parser.add_argument("--board", default="u280", help="board to compile for (default u280)")
    parser.add_argument("--workdir", metavar="DIR", default=None,
                        help="keep the artifact and program in DIR and reuse them when present "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--ppl-tokens", type=int, default=1024,
                        help="tokens of the bundled text scored by all three models (default 1024: "
                        "two windows of 512)")
    parser.add_argument("--prompt", default="Write one sentence about the sea.",
                        help="chat prompt for the generation steps")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="tokens to generate per model (default 32)")


def run_subcommand(argv: list[str]) -> int:
    """Run another `llmfab` subcommand in this process; its errors propagate."""
    from llmfab.cli import build_parser

    args = build_parser().parse_args(argv)
    return args._run(args)


def quantize_argv(args, artifact: Path) -> list[str]:
    """The `llmfab quantize` command of step 2: the preset's training only with --train."""
    return (["quantize", args.model, "--preset", args.preset, "-o", str(artifact),
             "--calib-samples", str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len)]
            + ([] if args.train else ["--qat-block-epochs", "0", "--qat-steps", "0"])
            + (["--no-cache"] if args.no_cache else []))


def reusable(artifact: Path, model: str) -> bool:
    """True if ``artifact`` was quantized earlier from ``model`` (with the settings in its name)."""
    import json

    manifest = artifact / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("model_name") == model


def stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)


def run(args) -> int:
    from llmfab.errors import InputError

    if args.ppl_tokens < 2:
        raise InputError(f"--ppl-tokens must be at least 2, got {args.ppl_tokens}")
    if args.workdir:
        return run_in(Path(args.workdir), args)
    with tempfile.TemporaryDirectory(prefix="llmfab-demo-") as folder:
        return run_in(Path(folder), args)


def run_in(workdir: Path, args) -> int:
    from llmfab.commands.common import load_float_model
    from llmfab.commands.generate import report_timing, stream
    from llmfab.commands.run import open_from_args
    from llmfab.host.runtime import ProgramDecoder
    from llmfab.quant.generate import TorchDecoder

    name = f"{args.preset}-calib{args.calib_samples}x{args.calib_seq_len}" + ("-trained" if args.train else "")
    artifact, program = workdir / f"{name}.artifact", workdir / f"{name}.{args.board}.program"
    gen_args = argparse.Namespace(prompt=args.prompt, chat=True, system=None,
                                  max_new_tokens=args.max_new_tokens, temperature=0.0,
                                  top_k=0, top_p=1.0, seed=None)

    start = stage(f"1. ingest {args.model}, answer the prompt with the float model: {args.prompt}")
    checkpoint, model = load_float_model(args.model, not args.no_cache)
    c = checkpoint.config
    print(f"   {checkpoint.source}\n   {c.num_layers} layers, hidden {c.hidden_size}, heads "
          f"{c.num_heads}/{c.num_kv_heads} (q/kv), vocab {c.vocab_size}, context "
          f"{c.max_position_embeddings}")
    report_timing(stream(TorchDecoder(model), checkpoint.tokenizer, gen_args))
    done(start)

    start = stage(f"2. quantize: {args.preset}, {args.calib_samples} calibration windows of "
                  f"{args.calib_seq_len} tokens, {'with' if args.train else 'without'} the preset's training "
                  f"-> {artifact}")
    if reusable(artifact, args.model):
        print("   reusing the artifact in --workdir")
    else:
        run_subcommand(quantize_argv(args, artifact))
    done(start)

    start = stage(f"3. compile for {args.board} -> {program}")
    run_subcommand(["compile", str(artifact), "--board", args.board, "-o", str(program)])
    done(start)

    start = stage(f"4. run the program on the emulator (llmfab run --backend emu --chat): {args.prompt}")
    runtime = open_from_args(str(program), argparse.Namespace(backend="emu", artifact=None))
    report_timing(stream(ProgramDecoder(runtime.sequence), runtime.tokenizer, gen_args))
    done(start)

    start = stage(f"5. perplexity on the first {args.ppl_tokens} tokens of the bundled text (ctx {PPL_CTX}, "
                  f"stride {PPL_CTX})")
    results = perplexities(model, artifact, runtime, args.ppl_tokens)
    float_ppl = results["float"].ppl
    for name, result in results.items():
        print(f"   {name:<11} ppl {result.ppl:9.4f}  ({result.ppl / float_ppl:.3f} x float) over "
              f"{result.tokens} scored tokens")
    emulated, fake = results["emulated"].ppl, results["fake-quant"].ppl
    print(f"   emulated vs fake-quant: {100 * (emulated / fake - 1):+.2f} %")
    done(start)
    sys.stdout.flush()
    return 0


def perplexities(model, artifact: Path, runtime, n_tokens: int) -> dict:
    """PerplexityResult of the float model, the artifact's fake-quant model and the program on the
    emulator, over the same windows of the bundled text."""
    from llmfab.host.runtime import window_logits
    from llmfab.progress import progress
    from llmfab.quant.artifact import load_artifact
    from llmfab.quant.perplexity import perplexity, read_text
    from llmfab.quant.recipe_runtime import apply_kv_and_attention, cached_logits

    _, text = read_text(None)
    tokens = runtime.tokenizer.encode(text)[:n_tokens]
    compressed = load_artifact(artifact)
    apply_kv_and_attention(compressed.model, compressed.recipe)
    scorers = {"float": model, "fake-quant": cached_logits(compressed.model),
               "emulated": window_logits(runtime.sequence)}
    return {name: perplexity(scorer, tokens, PPL_CTX, PPL_CTX, progress=progress)
            for name, scorer in scorers.items()}
