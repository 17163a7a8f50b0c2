"""Compress a model with a named recipe and write a packed artifact folder.

A preset (w8a8kv8, w4a8kv4, w2a8kv4, accllm) sets every option; the options below replace single
settings. Calibration windows come from --calib-text (default: the excerpt of Austen's Emma
shipped with llmfab); decoder layers are compressed one after another with GPTQ (and SparseGPT
for 2:4). The folder holds model.safetensors, tokenizer.json and manifest.json; run it with
`llmfab eval --artifact DIR` or `llmfab generate --artifact DIR`. The KV-cache and Λ-attention
settings are recorded in the manifest for the stages that run them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from llmfab.commands.common import add_model_argument, load_float_model

HELP = "compress a model (2:4, W2/4/8, A8, KV4/8, Λ attention) into a packed artifact"


def add_arguments(parser) -> None:
    from llmfab.quant.recipe import PRESETS

    add_model_argument(parser)
    parser.add_argument("--preset", required=True,
                        help=f"recipe to start from: {', '.join(PRESETS)}")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="artifact folder to write (replaced if it holds an earlier artifact)")
    parser.add_argument("--weight-bits", type=int, help="decoder weight bits: 2, 3, 4 or 8")
    parser.add_argument("--group-size", type=int,
                        help="input columns per weight scale; must divide every layer's input (e.g. 64)")
    parser.add_argument("--act-bits", type=int, help="linear-input bits: 8 (per-token) or 16 (float)")
    parser.add_argument("--kv-bits", type=int, help="KV-cache bits: 4, 8 or 16 (float)")
    parser.add_argument("--kv-granularity", metavar="G[,G]",
                        help="KV scale granularity, per-token or per-channel: one for keys and values, "
                        "or KEYS,VALUES (preset default per-channel,per-token)")
    parser.add_argument("--sparsity", choices=("none", "2:4"), help="decoder weight sparsity")
    parser.add_argument("--pruning", choices=("sparsegpt", "wanda"), help="how the 2:4 mask is chosen")
    parser.add_argument("--zero-point", choices=("integer", "half-integer"),
                        help="weight zero-point resolution (half-integer: one more bit per group)")
    parser.add_argument("--sinks", type=int, help="Λ attention: attention-sink tokens kept")
    parser.add_argument("--window", type=int, help="Λ attention: most recent tokens kept")
    parser.add_argument("--calib-text", action="append", metavar="FILE",
                        help="UTF-8 calibration text (repeatable; default: bundled Emma excerpt)")
    parser.add_argument("--calib-samples", type=int, help="calibration windows (preset default 32)")
    parser.add_argument("--calib-seq-len", type=int, help="tokens per calibration window (default 512)")
    parser.add_argument("--qat-steps", type=int,
                        help="quantization-aware training steps after calibration (preset default: 20 "
                        "for w2a8kv4 and accllm, 0 = none for the others); distills from the float model "
                        "(KL on the training text, see --qat-text), checkpoints to DIR.qat.pt and resumes from it. "
                        "20-100 s a step for SmolLM2-135M on 2 cores, depending on load")
    parser.add_argument("--qat-mode", choices=("scales", "weights"),
                        help="what QAT trains: scales = the per-group weight scales only, codes frozen "
                        "(default; EfficientQAT's end-to-end step), weights = latent weights and scales "
                        "through a brevitas quantizer, so codes may change")
    parser.add_argument("--qat-lr", type=float,
                        help="QAT learning rate of the latent weights in --qat-mode weights (default 1e-5)")
    parser.add_argument("--qat-scale-lr", type=float,
                        help="QAT learning rate of the per-group scales (default 2e-3; cosine decay to 0)")
    parser.add_argument("--qat-loss", choices=("kl", "ce"),
                        help="QAT objective: kl = match the float model's next-token distribution "
                        "(default), ce = next-token cross-entropy on the calibration text")
    parser.add_argument("--qat-block-epochs", type=int,
                        help="block-wise reconstruction (EfficientQAT's Block-AP) before the --qat-steps "
                        "end-to-end steps: for each decoder layer in turn, N passes over --qat-block-samples "
                        "calibration windows train its latent weights and per-group scales (codes may "
                        "change; 2:4 masks and integer zero points stay) so that its output, fed by the "
                        "layers already reconstructed, matches the float layer's (MSE); checkpoints after "
                        "every layer to DIR.qat.block.pt and resumes from it (preset default: 2 for w2a8kv4 and accllm, "
                        "about 20-25 min for SmolLM2-135M on 2 cores; 0 = off for the others)")
    parser.add_argument("--qat-block-samples", type=int,
                        help="windows of --calib-seq-len tokens of the training text (--qat-text) block "
                        "reconstruction trains on (default 64, 128 for the 2-bit presets; the text's last 2 "
                        "windows are held out to report the error)")
    parser.add_argument("--qat-block-lr", type=float,
                        help="block reconstruction learning rate of the latent weights (default 1e-3)")
    parser.add_argument("--qat-block-scale-lr", type=float,
                        help="block reconstruction learning rate of the per-group scales (default 1e-3)")
    parser.add_argument("--qat-text", action="append", metavar="FILE",
                        help="UTF-8 text block reconstruction and the end-to-end QAT steps train on "
                        "(repeatable; default: the --calib-text files if given, else for 2-bit weights the "
                        "bundled training text, 96 passages of four Austen novels, for wider ones the "
                        "calibration excerpt). May differ from the calibration text "
                        "of a --qat-from artifact")
    parser.add_argument("--qat-from", metavar="ARTIFACT",
                        help="skip calibration and start QAT from this post-training artifact of the "
                        "same model and recipe (QAT settings may differ); block reconstruction needs "
                        "one quantized with --keep-unrounded")
    parser.add_argument("--keep-unrounded", action="store_true",
                        help="post-training only (--qat-steps 0 --qat-block-epochs 0): also write GPTQ's pre-rounding "
                        "weights to DIR/unrounded.safetensors (float32, 4 bytes a weight, about 425 MB "
                        "for SmolLM2-135M; not part of the compressed model), so that --qat-from DIR "
                        "can run block reconstruction later")
    parser.add_argument("--head-act-bits", type=int, choices=(8, 16),
                        help="bits of the LM head's input: 8 = per-token int8 like the other linear "
                        "layers, 16 = left in floating point (default: as --act-bits, except w8a8kv8: 16)")
    parser.add_argument("--smooth-alpha", type=_alpha_or_off, metavar="ALPHA|off",
                        help="SmoothQuant migration strength, 0 < ALPHA < 1: before GPTQ, divide each "
                        "linear input channel by max|x|^ALPHA / max|w|^(1-ALPHA) (calibration maxima) "
                        "and fold the factor into the norms and weights, which eases per-token A8 at no "
                        "run-time cost; higher ALPHA moves more of the outliers into the weights. "
                        "w8a8kv8 and w4a8kv4 default to 0.7, the 2-bit presets to off")


def _alpha_or_off(text: str):
    """``--smooth-alpha`` value: a float, or the string "off" (no smoothing)."""
    import argparse

    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'off'") from None


def recipe_from_args(args):
    """The Recipe named by --preset with the command-line overrides applied."""
    import dataclasses

    from llmfab.quant.recipe import Recipe

    keys = values = None
    if args.kv_granularity:
        keys, _, values = args.kv_granularity.partition(",")
        values = values or keys
    smoothing_off = args.smooth_alpha == "off"
    recipe = Recipe.from_preset(
        args.preset, weight_bits=args.weight_bits, group_size=args.group_size,
        act_bits=args.act_bits, kv_bits=args.kv_bits, kv_key_granularity=keys, kv_value_granularity=values,
        sparsity=args.sparsity, pruning=args.pruning, zero_point=args.zero_point,
        sinks=args.sinks, window=args.window, calib_texts=args.calib_text, head_act_bits=args.head_act_bits,
        calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, qat_steps=args.qat_steps,
        qat_lr=args.qat_lr, qat_scale_lr=args.qat_scale_lr, qat_loss=args.qat_loss, qat_mode=args.qat_mode,
        qat_block_epochs=args.qat_block_epochs, qat_block_samples=args.qat_block_samples,
        qat_block_lr=args.qat_block_lr, qat_block_scale_lr=args.qat_block_scale_lr,
        qat_texts=args.qat_text,
        smooth_alpha=None if smoothing_off else args.smooth_alpha,
    )
    return dataclasses.replace(recipe, smooth_alpha=None) if smoothing_off else recipe


def run(args) -> int:
    from llmfab.progress import progress
    from llmfab.quant.artifact import check_output_folder, save_artifact
    from llmfab.quant.calibrate import calibration_windows, quantize_model

    recipe = recipe_from_args(args)
    check_output_folder(args.output)
    checkpoint, model = load_float_model(args.model, not args.no_cache)
    recipe.check_model(checkpoint.config)
    if args.keep_unrounded and (recipe.trains or args.qat_from):
        from llmfab.errors import InputError

        raise InputError("--keep-unrounded keeps GPTQ's pre-rounding weights of a post-training run, "
                         "which training replaces; give --qat-steps 0 --qat-block-epochs 0 (and no "
                         "--qat-from)")
    start = time.perf_counter()
    if args.qat_from:
        from llmfab.errors import InputError
        from llmfab.quant.qat import post_training_model

        if not recipe.trains:
            raise InputError("--qat-from starts quantization-aware training; give --qat-steps N or "
                             "--qat-block-epochs N (N > 0)")

        model = post_training_model(args.qat_from, checkpoint.config, recipe)
    else:
        quantize_model(model, recipe, calibration_windows(checkpoint.tokenizer, recipe), progress=progress)
    if recipe.trains:
        from llmfab.quant.qat import run_recipe_qat

        run = run_recipe_qat(model, checkpoint, recipe, Path(f"{args.output.rstrip('/')}.qat.pt"), progress)
        _print_training(recipe, run)
    manifest = save_artifact(args.output, model, recipe, checkpoint.tokenizer, model_name=args.model)
    if args.keep_unrounded:
        from llmfab.quant.artifact import save_unrounded

        save_unrounded(args.output, model)
    sizes = manifest["sizes"]
    print(f"{args.model} -> {args.output} ({recipe.name}, {time.perf_counter() - start:.1f} s): "
          f"{sizes['bits_per_weight']:.3f} bits/weight in decoder layers (codes, scales, zero points, "
          f"2:4 index), model {sizes['model_bytes'] / 1e6:.2f} MB, "
          f"KV {sizes['kv_bytes_per_token']:.0f} bytes/token")
    sys.stdout.flush()
    return 0


def _print_training(recipe, run) -> None:
    """One stderr line per training stage: block reconstruction's held-out error, QAT's loss."""
    if recipe.qat_block_epochs:
        if run.block:
            before = sum(r.held_out_before for r in run.block) / len(run.block)
            after = sum(r.held_out_after for r in run.block) / len(run.block)
            print(f"block reconstruction: {len(run.block)} layers, held-out output MSE (mean over layers) "
                  f"{before:.4g} -> {after:.4g}", file=sys.stderr)
        else:
            print("block reconstruction: already complete in its checkpoint", file=sys.stderr)
    if recipe.qat_steps:
        losses = run.losses
        print(f"QAT: {len(losses)} steps, distillation loss {losses[0]:.4f} -> {losses[-1]:.4f}"
              if losses else "QAT: already complete in its checkpoint", file=sys.stderr)
