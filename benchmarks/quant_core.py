"""Measure the compression core on synthetic layers and write JSON.

Usage: python benchmarks/quant_core.py [--out results/quant_core.json] [--seeds 3]

Synthetic data only (random weights, correlated random inputs): these numbers compare methods
against each other; they say nothing about perplexity of a real model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import torch

from llmfab.quant.gptq import gptq_quantize, sparsegpt_gptq
from llmfab.quant.obs_sweep import ObsConfig
from llmfab.quant.sparsity import (
    apply_mask,
    input_channel_norms,
    magnitude_2to4_mask,
    sparsegpt_prune,
    wanda_2to4_mask,
)
from llmfab.quant.weight_quant import (
    GroupQuantConfig,
    ScaleInit,
    ZeroPoint,
    dequantize_groupwise,
    quantize_groupwise,
)
from llmfab.tests.quant.correlated_data import correlated_layer


def weight_init_errors(seed: int) -> dict:
    """Weight MSE of min-max vs clip-search init at 2 bits, Gaussian and Laplace weights."""
    gen = torch.Generator().manual_seed(seed)
    weights = {
        "gaussian": torch.randn(256, 576, generator=gen),
        "laplace": torch.distributions.Laplace(0.0, 1.0).sample((256, 576)),
    }
    rows = {}
    for kind, weight in weights.items():
        mask = magnitude_2to4_mask(weight)
        for label, m in (("dense", None), ("2:4", mask)):
            errs = {}
            for init in ScaleInit:
                q = quantize_groupwise(weight, GroupQuantConfig(bits=2, group_size=64, init=init), mask=m)
                diff = dequantize_groupwise(q) - (weight if m is None else weight * m)
                errs[init.value] = float(diff.pow(2).mean())
            rows[f"{kind}/{label}"] = errs | {"clip_over_minmax": errs["clip_search"] / errs["minmax"]}
    return rows


def half_integer_zero_gain(seed: int) -> float:
    """2-bit squared error of kept 2:4 weights with half-integer zero points, relative to integer
    zero points (both with clip search, group 64)."""
    weight = torch.randn(256, 576, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_2to4_mask(weight)
    errors = []
    for zero_point in (ZeroPoint.INTEGER, ZeroPoint.HALF_INTEGER):
        config = GroupQuantConfig(bits=2, group_size=64, zero_point=zero_point)
        restored = dequantize_groupwise(quantize_groupwise(weight, config, mask=mask))
        errors.append(float((restored - weight)[mask].pow(2).sum()))
    return errors[1] / errors[0]


def pruning_errors(seed: int) -> dict:
    case = correlated_layer(seed=seed, out_features=128, in_features=256, samples=1024)
    magnitude = case.output_error(apply_mask(case.weight, magnitude_2to4_mask(case.weight)).weight)
    wanda = case.output_error(
        apply_mask(case.weight, wanda_2to4_mask(case.weight, input_channel_norms(case.inputs))).weight
    )
    sparsegpt = case.output_error(sparsegpt_prune(case.weight, case.hessian).weight)
    return {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt,
            "sparsegpt_over_wanda": sparsegpt / wanda}


def quantization_errors(seed: int) -> dict:
    case = correlated_layer(seed=seed, out_features=128, in_features=256, samples=1024)
    rows = {}
    mask = sparsegpt_prune(case.weight, case.hessian).mask
    for bits in (2, 3, 4):
        quant = GroupQuantConfig(bits=bits, group_size=64)
        rtn = case.output_error(dequantize_groupwise(quantize_groupwise(case.weight, quant)))
        gptq = case.output_error(gptq_quantize(case.weight, case.hessian, quant).weight)
        act = case.output_error(gptq_quantize(case.weight, case.hessian, quant, ObsConfig(act_order=True)).weight)
        pruned = sparsegpt_prune(case.weight, case.hessian)
        prune_rtn = case.output_error(dequantize_groupwise(quantize_groupwise(pruned.weight, quant, mask=mask)))
        joint = case.output_error(sparsegpt_gptq(case.weight, case.hessian, quant).weight)
        half = GroupQuantConfig(bits=bits, group_size=64, zero_point=ZeroPoint.HALF_INTEGER)
        joint_half = case.output_error(sparsegpt_gptq(case.weight, case.hessian, half).weight)
        rows[f"w{bits}"] = {
            "rtn": rtn, "gptq": gptq, "gptq_act_order": act, "gptq_over_rtn": gptq / rtn,
            "sparsegpt_then_rtn": prune_rtn, "sparsegpt_gptq_joint": joint,
            "sparsegpt_gptq_joint_half_zero": joint_half,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/quant_core.json")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    seeds = list(range(args.seeds))
    report = {
        "weight_init_2bit": {s: weight_init_errors(s) for s in seeds},
        "half_integer_zero_over_integer_2bit_2to4": [half_integer_zero_gain(s) for s in seeds],
        "pruning_output_error": {s: pruning_errors(s) for s in seeds},
        "quantization_output_error": {s: quantization_errors(s) for s in seeds},
    }
    ratios = [report["pruning_output_error"][s]["sparsegpt_over_wanda"] for s in seeds]
    report["summary"] = {
        "sparsegpt_over_wanda_mean": statistics.mean(ratios),
        "gptq_over_rtn_mean": {
            b: statistics.mean(report["quantization_output_error"][s][b]["gptq_over_rtn"] for s in seeds)
            for b in ("w2", "w3", "w4")
        },
        "clip_over_minmax_mean": {
            k: statistics.mean(report["weight_init_2bit"][s][k]["clip_over_minmax"] for s in seeds)
            for k in report["weight_init_2bit"][0]
        },
        "half_integer_zero_over_integer_mean": statistics.mean(report["half_integer_zero_over_integer_2bit_2to4"]),
        "w2_2to4_output_error_mean": {
            k: statistics.mean(report["quantization_output_error"][s]["w2"][k] for s in seeds)
            for k in ("sparsegpt_then_rtn", "sparsegpt_gptq_joint", "sparsegpt_gptq_joint_half_zero")
        },
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
