"""Inspect Einsum-cascade IR files.

`llmfab ir check FILE` parses and validates a cascade (IR text, or TeAAL YAML for .yaml/.yml
files), then lists its tensors, its Einsums and, for every rank, how many passes over that
rank's fibers the cascade needs (FuseMax pass analysis). `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse

HELP = "check Einsum-cascade IR files (validation, tensors, Einsums, pass counts)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="ir_action", metavar="ACTION", required=True,
                                    help="what to do with the cascade file")
    check = actions.add_parser(
        "check",
        help="validate a cascade file and report its tensors, Einsums and pass counts",
        description="Validate a cascade file (IR text, or TeAAL YAML by extension .yaml/.yml) and report "
        "its tensors, Einsums and the number of passes per rank.",
    )
    check.add_argument("file", help="cascade file: IR text (any extension) or TeAAL YAML (.yaml, .yml)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    import json

    from llmfab.compiler.cascade_files import load_cascade
    from llmfab.compiler.passes import analyze_all
    from llmfab.compiler.printer import format_einsum, format_tensor

    cascade = load_cascade(args.file)
    analyses = analyze_all(cascade)
    passes = max((a.passes for a in analyses.values()), default=0)
    if args.json:
        report = {
            "file": args.file,
            "ranks": {r.name: r.size for r in cascade.ranks},
            "tensors": [
                {"name": t.name, "ranks": list(t.rank_names), "format": t.format.spelling()} for t in cascade.tensors
            ],
            "inputs": cascade.inputs(),
            "outputs": cascade.outputs(),
            "einsums": [format_einsum(e) for e, _ in cascade.einsums()],
            "passes": passes,
            "passes_per_rank": {rank: a.passes for rank, a in analyses.items()},
            "tensor_passes": {rank: dict(a.tensor_passes) for rank, a in analyses.items()},
        }
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.file}: valid cascade")
    print(f"tensors ({len(cascade.tensors)}):")
    for tensor in cascade.tensors:
        role = "input" if tensor.name in cascade.inputs() else "output" if tensor.name in cascade.outputs() else "temp"
        print(f"  {format_tensor(tensor)[len('tensor '):]}  ({role})")
    einsums = cascade.einsums()
    print(f"einsums ({len(einsums)}):")
    for einsum, iteration in einsums:
        where = f"  [iterate {iteration.index}]" if iteration is not None else ""
        print(f"  {format_einsum(einsum)}{where}")
    print("passes per rank:")
    for rank, analysis in analyses.items():
        revisited = [f"{name} x{count}" for name, count in analysis.tensor_passes if count > 1]
        extra = f"  (fibers read in several passes: {', '.join(revisited)})" if revisited else ""
        print(f"  {rank}: {analysis.passes}{extra}")
    print(f"passes: {passes}")
    return 0
