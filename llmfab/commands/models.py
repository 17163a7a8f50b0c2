"""List the model names llmfab resolves by itself, and where each one resolves.

Any .gguf file or Hugging Face folder (config.json, *.safetensors, tokenizer.json) can also be
passed where a MODEL is expected."""

from __future__ import annotations

import json

HELP = "list bundled model names and where they resolve"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args) -> int:
    from llmfab.quant.checkpoint import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        where = row["path"] or f"not installed ({row['install']})"
        print(f"{row['name']:<16} {row['description']}\n{'':<16} {where}")
    return 0
