"""Compression quality of every preset against the float model, plus the long-stream curve.

Usage: OMP_NUM_THREADS=2 python benchmarks/quality.py [--model smollm2-135m]
           [--presets w8a8kv8,w4a8kv4,w2a8kv4,accllm] [--qat-steps N] [--max-tokens 4096]
           [--ctx 512,2048] [--artifacts results/artifacts] [--stream-tokens 16384]
           [--out results/quality.json] [--plot results/quality.png] [--reuse-stream EARLIER.json]
           [--use PRESET=DIR ...]

For the float model and each preset: perplexity on the bundled persuasion.txt (never used for
calibration or QAT) at each --ctx over the first --max-tokens tokens, bits per weight (codes,
scales, zero points, 2:4 index), model bytes and KV bytes per token. Artifacts are written to
--artifacts/PRESET and reused when their recipe matches, so an interrupted run resumes;
`--use PRESET=DIR` takes DIR's artifact for PRESET as it is (a longer-trained one, say), its
recipe read from its manifest and reported.
Then, unless --stream-tokens is 0, perplexity by position over one stream of that many tokens
for Λ attention (4 sinks + 1024 window) and dense attention, on the float model.

Cost on 2 cores: about 35 minutes for each 2-bit preset, less for the wider ones, minutes for the
long streams (measured times: docs/compression_measurements.md, "The quality benchmark with the
presets as shipped"). To use both cores, quantize two halves of --presets in parallel with
--stream-tokens 0, then run the plain command, which reuses their artifacts.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from lambda_long_stream import ppl, stream_nll  # noqa: E402

from llmfab.quant.artifact import MANIFEST, load_artifact, save_artifact  # noqa: E402
from llmfab.quant.calibrate import calibration_windows, quantize_model  # noqa: E402
from llmfab.quant.checkpoint import load_checkpoint  # noqa: E402
from llmfab.quant.lambda_attention import enable_lambda_attention  # noqa: E402
from llmfab.quant.model import LlamaModel  # noqa: E402
from llmfab.quant.perplexity import perplexity, read_text  # noqa: E402
from llmfab.quant.qat import run_recipe_qat  # noqa: E402
from llmfab.quant.recipe import Recipe  # noqa: E402
from llmfab.quant.recipe_runtime import apply_kv_and_attention, cached_logits  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def artifact_for(preset: str, checkpoint, recipe: Recipe, folder: pathlib.Path, model_name: str):
    """Load folder's artifact if it was made with ``recipe``, else quantize and save it."""
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text())["recipe"] == recipe.to_dict():
        log(f"{preset}: reusing {folder}")
        return load_artifact(folder)
    log(f"{preset}: quantizing")
    model = LlamaModel.from_checkpoint(checkpoint)
    quantize_model(model, recipe, calibration_windows(checkpoint.tokenizer, recipe))
    if recipe.trains:
        run_recipe_qat(model, checkpoint, recipe, folder.with_name(folder.name + ".qat.pt"))
    save_artifact(folder, model, recipe, checkpoint.tokenizer, model_name=model_name)
    return load_artifact(folder)


def perplexities(logits_fn, tokens: list[int], contexts: list[int]) -> dict:
    return {str(ctx): perplexity(logits_fn, tokens, ctx, ctx).ppl for ctx in contexts}


def long_stream(checkpoint, tokens: list[int], count: int) -> dict:
    """Per-1024-token perplexity of one stream, Λ (4 + 1024) versus dense, float weights."""
    ids = torch.tensor(tokens[:count])
    curves = {}
    for mode in ("lambda", "dense"):
        model = LlamaModel.from_checkpoint(checkpoint)
        if mode == "lambda":
            enable_lambda_attention(model, 4, 1024)
        log(f"long stream: {mode} over {ids.numel()} tokens")
        nll = stream_nll(model, ids, 512, progress=lambda _m: None)
        curves[mode] = {
            "bucket_ppl": [ppl(nll[b : b + 1024]) for b in range(0, nll.numel(), 1024)],
            "first_2048": ppl(nll[:2048]), "last_2048": ppl(nll[-2048:]),
        }
        curves[mode]["last_over_first"] = curves[mode]["last_2048"] / curves[mode]["first_2048"]
    return curves


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = result["models"]
    contexts = result["contexts"]
    width = 0.8 / len(contexts)
    for i, ctx in enumerate(contexts):
        ratios = [row["ppl"][str(ctx)] / rows[0]["ppl"][str(ctx)] for row in rows]
        bars.bar([x + i * width for x in range(len(rows))], ratios, width, label=f"ctx {ctx}")
    bars.set_xticks([x + width * (len(contexts) - 1) / 2 for x in range(len(rows))])
    bars.set_xticklabels([f"{r['name']}\n{r['bits_per_weight']:.2f} b/w" for r in rows])
    bars.set_ylabel("perplexity / float perplexity")
    bars.set_yscale("log")
    bars.legend()
    bars.set_title(f"{result['model']} on persuasion ({result['tokens']} tokens)")
    for mode, data in result.get("long_stream", {}).items():
        xs = [1024 * (i + 0.5) for i in range(len(data["bucket_ppl"]))]
        curve.plot(xs, data["bucket_ppl"], marker="o", label="Λ 4+1024" if mode == "lambda" else "dense")
    if result.get("long_stream"):
        curve.axvline(result["trained_context"], color="grey", linestyle=":", label="trained context")
        curve.set_xlabel("position in stream (tokens)")
        curve.set_ylabel("perplexity per 1024 tokens")
        curve.set_yscale("log")
        curve.legend()
        curve.set_title("long stream, float weights")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--presets", default="w8a8kv8,w4a8kv4,w2a8kv4,accllm")
    parser.add_argument("--qat-steps", type=int, default=None,
                        help="QAT steps for the 2-bit presets (default: each preset's own setting)")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--ctx", default="512,2048")
    parser.add_argument("--artifacts", default="results/artifacts")
    parser.add_argument("--stream-tokens", type=int, default=16384)
    parser.add_argument("--reuse-stream", default=None,
                        help="take the long-stream curves from an earlier output JSON instead of recomputing them")
    parser.add_argument("--out", default="results/quality.json")
    parser.add_argument("--plot", default="results/quality.png")
    parser.add_argument("--use", action="append", default=[], metavar="PRESET=DIR",
                        help="evaluate the artifact in DIR for PRESET instead of quantizing (repeatable)")
    args = parser.parse_args()
    given = {}
    for item in args.use:
        preset, sep, folder = item.partition("=")
        if not sep or not (pathlib.Path(folder) / MANIFEST).is_file():
            parser.error(f"--use {item!r}: expected PRESET=DIR with an artifact (manifest.json) in DIR")
        given[preset] = pathlib.Path(folder)

    contexts = [int(c) for c in args.ctx.split(",")]
    checkpoint = load_checkpoint(args.model)
    tokens = checkpoint.tokenizer.encode(read_text(None)[1])
    scored = tokens[: args.max_tokens]
    float_model = LlamaModel.from_checkpoint(checkpoint)
    log("float model")
    rows = [{"name": "float", "ppl": perplexities(float_model, scored, contexts), "bits_per_weight": 32.0,
             "model_bytes": 4 * checkpoint.config.num_parameters(),
             "kv_bytes_per_token": 2 * 2 * checkpoint.config.num_layers * checkpoint.config.kv_dim}]
    for preset in [p for p in args.presets.split(",") if p]:
        overrides = {"qat_steps": args.qat_steps} if args.qat_steps is not None and preset in ("w2a8kv4", "accllm") else {}
        if preset in given:
            log(f"{preset}: using {given[preset]}")
            artifact = load_artifact(given[preset])
            recipe = artifact.recipe
        else:
            recipe = Recipe.from_preset(preset, **overrides)
            artifact = artifact_for(preset, checkpoint, recipe, pathlib.Path(args.artifacts) / preset, args.model)
        attention = apply_kv_and_attention(artifact.model, artifact.recipe)
        sizes = artifact.manifest["sizes"]
        rows.append({"name": preset, "recipe": recipe.to_dict(), "artifact": str(given.get(preset, "")) or None,
                     "attention": attention,
                     "ppl": perplexities(cached_logits(artifact.model), scored, contexts),
                     "bits_per_weight": sizes["bits_per_weight"], "model_bytes": sizes["model_bytes"],
                     "kv_bytes_per_token": sizes["kv_bytes_per_token"]})
        log(f"{preset}: {rows[-1]['ppl']}")
    for row in rows:
        row["ppl_ratio"] = {c: row["ppl"][c] / rows[0]["ppl"][c] for c in row["ppl"]}
    result = {"model": args.model, "text": "persuasion.txt", "tokens": len(scored), "contexts": contexts,
              "trained_context": checkpoint.config.max_position_embeddings,
              "models": rows}
    if args.reuse_stream:
        earlier = json.loads(pathlib.Path(args.reuse_stream).read_text())
        result["long_stream"] = earlier["long_stream"]
        result["long_stream_from"] = args.reuse_stream
    elif args.stream_tokens:
        result["long_stream"] = long_stream(checkpoint, tokens, args.stream_tokens)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, pathlib.Path(args.plot))
    for row in rows:
        print(f"{row['name']:>8}  " + "  ".join(f"ctx {c}: {row['ppl'][c]:8.3f} (x{row['ppl_ratio'][c]:.3f})"
                                                 for c in row["ppl"])
              + f"  {row['bits_per_weight']:.3f} b/w  {row['model_bytes'] / 1e6:.1f} MB  "
              f"KV {row['kv_bytes_per_token']:.0f} B/token")
    if math.isfinite(result.get("long_stream", {}).get("lambda", {}).get("last_over_first", math.nan)):
        print("long stream last/first 2048:", {m: round(d["last_over_first"], 3)
                                               for m, d in result["long_stream"].items()})


if __name__ == "__main__":
    with torch.no_grad():
        main()
