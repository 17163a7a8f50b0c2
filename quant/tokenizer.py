"""Tokenizer glue: a `tokenizers` BPE tokenizer built from GGUF metadata or a HF tokenizer.json,
with BOS/EOS handling, streaming decode and the model's chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmfab.errors import InputError

# GGUF `tokenizer.ggml.pre` names whose pre-tokenization we reproduce.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE = ("smollm", "gpt-2", "default", "llama-bpe")
END_MARKERS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>")
GGUF_TOKEN_CONTROL = 3
GGUF_TOKEN_USER_DEFINED = 4


def _pre_tokenizer(pre: str, path):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt-2", "default"):
        return byte_level
    if pre == "llama-bpe":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise InputError(
        f"{path}: GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(SUPPORTED_PRE)}"
    )


@dataclass
class Tokenizer:
    """Text <-> token ids for one model."""

    backend: object  # tokenizers.Tokenizer
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos: bool
    chat_template: str | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_gguf_fields(cls, get, path) -> "Tokenizer":
        """Build from GGUF metadata; `get(key)` returns a field's contents or None."""
        from tokenizers import AddedToken, decoders
        from tokenizers import Tokenizer as Backend
        from tokenizers.models import BPE

        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise InputError(
                f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, "
                "'gpt2'); load the model's Hugging Face folder with its tokenizer.json instead"
            )
        tokens = get("tokenizer.ggml.tokens")
        merges = get("tokenizer.ggml.merges")
        if not tokens or merges is None:
            raise InputError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens or merges")
        types = get("tokenizer.ggml.token_type") or [1] * len(tokens)
        vocab = {token: i for i, token in enumerate(tokens)}
        backend = Backend(BPE(vocab, [tuple(m.split(" ", 1)) for m in merges], fuse_unk=False))
        backend.pre_tokenizer = _pre_tokenizer(get("tokenizer.ggml.pre") or "default", path)
        backend.decoder = decoders.ByteLevel()
        special = [AddedToken(tokens[i], special=True, normalized=False)
                   for i, t in enumerate(types) if t in (GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED)]
        backend.add_special_tokens(special)
        add_bos = get("tokenizer.ggml.add_bos_token")
        return cls(
            backend=backend,
            bos_token_id=get("tokenizer.ggml.bos_token_id"),
            eos_token_id=get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(add_bos) if add_bos is not None else False,
            chat_template=get("tokenizer.chat_template"),
        )

    @classmethod
    def from_hf_folder(cls, folder: Path) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise InputError(f"{folder}: no tokenizer.json; export the tokenizer with save_pretrained")
        backend = Backend.from_file(str(path))
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        template = settings.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        bos = _token_id(backend, settings.get("bos_token"))
        eos = _token_id(backend, settings.get("eos_token"))
        if "add_bos_token" in settings:
            add_bos = bool(settings["add_bos_token"])
        else:  # e.g. Llama-3 adds BOS in its post-processor
            ids = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos is not None and bool(ids) and ids[0] == bos
        return cls(backend, bos, eos, add_bos, template)

    # ---- serialization (float cache) --------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "backend": self.backend.to_str(), "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id, "add_bos": self.add_bos,
            "chat_template": self.chat_template,
        })

    @classmethod
    def from_json(cls, text: str) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        data = json.loads(text)
        return cls(Backend.from_str(data.pop("backend")), **data)

    # ---- use ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> set[int]:
        """EOS plus the end-of-turn / end-of-text markers of common chat formats."""
        ids = {self.eos_token_id} if self.eos_token_id is not None else set()
        for marker in END_MARKERS:
            token_id = self.backend.token_to_id(marker)
            if token_id is not None:
                ids.add(token_id)
        return ids

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise InputError("this model has no chat template; drop --chat and pass the raw prompt")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise InputError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        token = lambda i: self.backend.id_to_token(i) if i is not None else ""  # noqa: E731
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=token(self.bos_token_id), eos_token=token(self.eos_token_id),
        )


def _token_id(backend, token) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    return backend.token_to_id(token) if token else None


class StreamDecoder:
    """Incremental detokenization: yields only complete text (no half UTF-8 characters)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, self.skip_special)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new
