"""Generate text with a compiled program on a backend, streaming tokens to stdout.

PROGRAM is a folder written by `llmfab compile ARTIFACT --board u280 -o PROGRAM`; it holds the
instructions, the HBM images and the tokenizer, so nothing else is needed. The prompt is prefilled
in chunks of the program's prefill size, then one decode routine runs per new token; the KV cache
(for Λ attention, its sink slots and ring buffer) lives in the backend's device memory. Sampling
options work as in `llmfab generate`. Timing goes to stderr, so stdout holds only the text.

Backends: `emu` (the instruction-level emulator, default) and `reference` (the integer reference
model of the artifact the program was compiled from, which the emulator must equal bit for bit).
"""

from __future__ import annotations

import sys
import time

from llmfab.commands.generate import add_sampling_arguments

HELP = "generate text with a compiled program on a backend (emu: the emulator)"


def add_backend_arguments(parser, program_help: str) -> None:
    """--backend and --artifact, shared with `llmfab eval --program`."""
    from llmfab.host.backend import BACKENDS

    parser.add_argument("--backend", default="emu",
                        help="what executes the program: " + "; ".join(f"{b.name} = {b.description}"
                                                                       for b in BACKENDS) + " (default emu)")
    parser.add_argument("--artifact", metavar="DIR", default=None,
                        help=f"with --backend reference: the artifact {program_help} was compiled from")


def add_arguments(parser) -> None:
    parser.add_argument("program", help="program folder written by `llmfab compile ARTIFACT --board u280 -o DIR`")
    add_backend_arguments(parser, "PROGRAM")
    add_sampling_arguments(parser)


def open_from_args(program: str, args, quiet: bool = False):
    """The runtime for ``program`` on ``args.backend``, reporting the load time on stderr."""
    from pathlib import Path

    from llmfab.host.backend import BackendOptions
    from llmfab.host.runtime import open_runtime

    from llmfab.errors import InputError

    if args.artifact and args.backend != "reference":
        raise InputError(f"--artifact is for --backend reference; the {args.backend} backend runs the program "
                         "alone, drop --artifact")
    start = time.perf_counter()
    options = BackendOptions(artifact=Path(args.artifact) if args.artifact else None)
    runtime = open_runtime(program, args.backend, options)
    if not quiet:
        limits = runtime.program.limits
        context = f"context {limits.max_context}" if limits.max_context else \
            f"Λ attention ({limits.sinks} sinks + {limits.window} window)"
        print(f"opened {program} on {args.backend} (prefill chunk {limits.max_prefill_tokens}, {context}) "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return runtime


def run(args) -> int:
    from llmfab.commands.generate import report_timing, stream
    from llmfab.host.runtime import ProgramDecoder

    runtime = open_from_args(args.program, args)
    report_timing(stream(ProgramDecoder(runtime.sequence), runtime.tokenizer, args))
    return 0
