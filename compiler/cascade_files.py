"""Read a cascade from a file: IR text, or TeAAL YAML when the name ends in .yaml/.yml."""

from __future__ import annotations

from pathlib import Path

from llmfab.compiler.ir import Cascade
from llmfab.compiler.ir_errors import IRError

EXAMPLES = Path(__file__).parent / "examples"


def load_cascade(path: str | Path, rank_sizes: dict[str, int] | None = None) -> Cascade:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IRError(f"cascade file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise IRError(f"cannot read cascade file {path}: {err}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        from llmfab.compiler.teaal import from_teaal

        return from_teaal(text, str(path), rank_sizes)
    from llmfab.compiler.parser import parse_cascade

    return parse_cascade(text, str(path))
