"""The `llmfab` command line: one subcommand per stage of the flow.

Each subcommand lives in its own module under `llmfab.commands` with a `HELP` string, an
`add_arguments(parser)` function and a `run(args) -> int` function; heavy imports stay inside
`run`, so `llmfab --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llmfab import __version__
from llmfab.errors import LlmfabError

# Order is the order of the flow; later stages add their module name here.
COMMANDS = ["models", "quantize", "compile", "simulate", "run", "rtl", "eval", "generate", "demo", "ir", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmfab",
        description="FPGA LLM-accelerator co-design: compress, compile, simulate and run "
        "LLaMA-family models.",
    )
    parser.add_argument("--version", action="version", version=f"llmfab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"llmfab.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except LlmfabError as err:
        print(f"llmfab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
