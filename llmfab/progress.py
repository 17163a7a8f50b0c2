"""Progress bars on stderr for anything that takes more than a few seconds.

Set LLMFAB_PROGRESS=0 to silence them (e.g. in logs)."""

from __future__ import annotations

import os


def progress(iterable=None, desc: str = "", total: int | None = None, unit: str = "it", initial: int = 0):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=False, dynamic_ncols=True,
                disable=os.environ.get("LLMFAB_PROGRESS", "1") == "0")
