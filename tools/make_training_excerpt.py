"""Write `llmfab/data/austen_training.txt`, the text QAT and block reconstruction train on by default.

    python tools/make_training_excerpt.py [--corpora ../shared/corpora] [-o llmfab/data/austen_training.txt]

It is `CHUNKS` passages of about `CHUNK_CHARS` characters from each of `NOVELS` (public domain;
`../shared/corpora/README.md`), their starts spread evenly over each novel and moved back to the
paragraph start, so the bundled text samples whole novels the way the measured runs' windows did
(docs/compression_measurements.md). persuasion.txt, the evaluation text, is never among them.
The output is deterministic: the test suite rebuilds it and compares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmfab.atomic import write_text_atomic
from llmfab.quant.calibrate import TRAINING_FILE

NOVELS = ("emma.txt", "mansfieldpark.txt", "prideprejudice.txt", "sensesensibility.txt")
CHUNKS = 24
CHUNK_CHARS = 3_500
PARAGRAPH = "\n\n"


def passages(text: str, chunks: int = CHUNKS, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """`chunks` passages of `text`, each from the start of the paragraph holding its target offset
    to the first paragraph break `chunk_chars` characters or more later; the targets spread evenly
    from 0 to the last offset that leaves `chunk_chars`, so every passage is at least that long."""
    if len(text) < chunks * chunk_chars:
        raise ValueError(f"text of {len(text)} characters is too short for {chunks} passages of {chunk_chars}")
    out = []
    last = len(text) - chunk_chars
    for i in range(chunks):
        target = round(i * last / max(chunks - 1, 1))
        start = text.rfind(PARAGRAPH, 0, target + 1)  # the paragraph holding the target
        start = 0 if start < 0 else start + len(PARAGRAPH)
        end = text.find(PARAGRAPH, start + chunk_chars)
        out.append(text[start : len(text) if end < 0 else end].strip())
    return out


def training_excerpt(corpora: Path) -> str:
    """The excerpt text from the novels in `corpora` (one blank line between passages)."""
    parts = []
    for name in NOVELS:
        path = corpora / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; pass --corpora DIR holding {', '.join(NOVELS)}")
        parts += passages(path.read_text(encoding="utf-8"))
    return PARAGRAPH.join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=root.parent / "shared" / "corpora")
    parser.add_argument("-o", "--output", type=Path, default=root / "llmfab" / "data" / TRAINING_FILE)
    args = parser.parse_args(argv)
    try:
        text = training_excerpt(args.corpora)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_text_atomic(args.output, text)
    print(f"wrote {args.output} ({len(text):,} characters, {len(NOVELS) * CHUNKS} passages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
