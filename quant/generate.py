"""Token generation: sampling rules and a streaming loop over any backend that can prefill a
prompt and decode one token at a time (the torch model here; the emulator and boards later)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from llmfab.errors import InputError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 mean no truncation."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise InputError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")


def choose_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Pick the next token from logits [vocab]."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class Decoder(Protocol):
    """What generation needs from a backend."""

    max_context: int

    def prefill(self, ids: list[int]) -> torch.Tensor: ...  # logits [vocab] after the prompt

    def step(self, token: int) -> torch.Tensor: ...  # logits [vocab] after one more token


class TorchDecoder:
    """Decoder over a torch LlamaModel (or any module with `new_cache()` and cached forward)."""

    def __init__(self, model, max_context: int | None = None):
        self.model = model
        self.max_context = max_context or model.config.max_position_embeddings
        self.cache = None

    @torch.no_grad()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.cache = self.model.new_cache()
        return self.model(torch.tensor([ids]), self.cache)[0, -1]

    @torch.no_grad()
    def step(self, token: int) -> torch.Tensor:
        return self.model(torch.tensor([[token]]), self.cache)[0, -1]


def generate(
    decoder: Decoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_ids: set[int] = frozenset(),
) -> Iterator[int]:
    """Yield new token ids until `max_new_tokens` or a stop token (which is not yielded)."""
    if not prompt_ids:
        raise InputError("the prompt is empty; pass some text with --prompt")
    if max_new_tokens < 0:
        raise InputError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if len(prompt_ids) + max_new_tokens > decoder.max_context:
        raise InputError(
            f"prompt ({len(prompt_ids)} tokens) + --max-new-tokens ({max_new_tokens}) exceeds "
            f"the context this backend supports ({decoder.max_context}); shorten one of them"
        )
    if max_new_tokens == 0:
        return
    generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    logits = decoder.prefill(prompt_ids)
    for i in range(max_new_tokens):
        token = choose_token(logits, sampling, generator)
        if token in stop_ids:
            return
        yield token
        if i + 1 < max_new_tokens:
            logits = decoder.step(token)
