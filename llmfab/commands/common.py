"""Pieces shared by several subcommands: option groups and model loading with progress."""

from __future__ import annotations

import sys
import time

DEFAULT_MODEL = "smollm2-135m"


def add_model_argument(parser) -> None:
    parser.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL,
        help=f"bundled model name, .gguf file or Hugging Face folder (default: {DEFAULT_MODEL}; "
        "`llmfab models` lists the names)",
    )
    parser.add_argument(
        "--no-cache", action="store_true",
        help="convert the checkpoint again instead of reading the float cache "
        "($LLMFAB_CACHE, default ~/.cache/llmfab)",
    )


def load_float_model(name: str, use_cache: bool = True, quiet: bool = False):
    """(checkpoint, LlamaModel) for `name`, reporting the load time on stderr."""
    from llmfab.progress import progress
    from llmfab.quant.checkpoint import load_checkpoint
    from llmfab.quant.model import LlamaModel

    start = time.perf_counter()
    checkpoint = load_checkpoint(name, use_cache=use_cache, progress=progress)
    model = LlamaModel.from_checkpoint(checkpoint)
    if not quiet:
        how = "float cache" if checkpoint.from_cache else f"converted {checkpoint.source.name}"
        print(f"loaded {name} ({checkpoint.config.num_parameters() / 1e6:.1f}M parameters, {how}) "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return checkpoint, model


def add_artifact_argument(parser) -> None:
    parser.add_argument(
        "--artifact", metavar="DIR", default=None,
        help="run the compressed model in DIR (written by `llmfab quantize`) instead of MODEL",
    )


def load_model_or_artifact(args, quiet: bool = False):
    """(tokenizer, model, description dict) for --artifact DIR if given, else for MODEL."""
    if args.artifact is None:
        checkpoint, model = load_float_model(args.model, not args.no_cache, quiet=quiet)
        return checkpoint.tokenizer, model, {"model": args.model, "backend": "torch-float"}
    from llmfab.quant.artifact import load_artifact
    from llmfab.quant.recipe_runtime import apply_kv_and_attention

    start = time.perf_counter()
    artifact = load_artifact(args.artifact)
    attention = apply_kv_and_attention(artifact.model, artifact.recipe)
    if not quiet:
        print(f"loaded artifact {args.artifact} ({artifact.recipe.name} of "
              f"{artifact.manifest['model_name'] or artifact.config.name}; {attention}) in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    sizes = artifact.manifest["sizes"]
    return artifact.tokenizer, artifact.model, {
        "model": args.artifact, "backend": "torch-fakequant", "recipe": artifact.recipe.name,
        "bits_per_weight": sizes["bits_per_weight"], "model_bytes": sizes["model_bytes"],
        "kv_bytes_per_token": sizes["kv_bytes_per_token"], "attention": attention,
    }
