"""Token-level perplexity over a text, with a declared context length and stride.

Windows follow the usual sliding-window evaluation: window i covers tokens
[i*stride, i*stride + ctx); it scores only the tokens no earlier window scored, and every
scored token is predicted from at least one token of context in its own window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from llmfab.errors import InputError


def default_text() -> Path:
    """The public-domain evaluation text shipped with the package (Austen's Persuasion)."""
    from importlib.resources import files

    return Path(str(files("llmfab") / "data" / "persuasion.txt"))


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    scored: int  # the last `scored` tokens of [begin, end) are scored


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # scored tokens
    ctx: int
    stride: int
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(n_tokens: int, ctx: int, stride: int) -> list[Window]:
    if ctx < 2:
        raise InputError(f"--ctx must be at least 2 tokens, got {ctx}")
    if not 1 <= stride <= ctx:
        raise InputError(f"--stride must be between 1 and --ctx ({ctx}), got {stride}")
    if n_tokens < 2:
        raise InputError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + ctx, n_tokens)
        scored = min(end - prev_end, end - begin - 1)
        if scored > 0:
            out.append(Window(begin, end, scored))
        prev_end = end
        if end == n_tokens:
            break
    return out


def read_text(path: Path | str | None) -> tuple[Path, str]:
    path = Path(path) if path is not None else default_text()
    if not path.is_file():
        raise InputError(f"text file {path} does not exist; pass --text FILE (UTF-8 plain text)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"text file {path} is not UTF-8 ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise InputError(f"text file {path} is empty")
    return path, text


@torch.no_grad()
def perplexity(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    tokens: list[int],
    ctx: int,
    stride: int,
    progress=None,
) -> PerplexityResult:
    """`logits_fn(ids [1, T]) -> logits [1, T, vocab]`, any backend; tokens already truncated."""
    plan = windows(len(tokens), ctx, stride)
    ids = torch.tensor(tokens, dtype=torch.long)
    total_nll, total = 0.0, 0
    for w in progress(plan, desc="perplexity", unit="window") if progress else plan:
        logits = logits_fn(ids[w.begin : w.end].unsqueeze(0))[0, -w.scored - 1 : -1]
        targets = ids[w.end - w.scored : w.end]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        total_nll -= logprobs.gather(1, targets.unsqueeze(1)).double().sum().item()
        total += w.scored
    nll = total_nll / total
    return PerplexityResult(math.exp(nll), nll, total, ctx, stride, len(plan))
