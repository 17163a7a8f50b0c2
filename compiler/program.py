"""The program folder (docs/program_format.md): writing what the scheduler compiled, and loading
it back with every check (format version, checksums, hardware fingerprint).

Folder contents: ``manifest.json``, ``instructions.bin`` (docs/isa.md), ``hbm/pcNN.bin`` (initial
contents of each used pseudo-channel), ``connectivity.cfg`` (v++) and the artifact's
``tokenizer.json``. A ``--shape-only`` program has no images and no tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from llmfab.atomic import atomic_folder
from llmfab.boards.hardware import HardwareConfig, HardwareConfigError
from llmfab.compiler.isa import WORD_BYTES, encode_program
from llmfab.compiler.placement import connectivity_cfg
from llmfab.errors import InputError

FORMAT = "llmfab-program"
FORMAT_VERSION = 1
ISA_VERSION = 1
MANIFEST = "manifest.json"
INSTRUCTIONS = "instructions.bin"
CONNECTIVITY = "connectivity.cfg"
TOKENIZER = "tokenizer.json"


class ProgramError(InputError):
    """A program folder is missing, damaged, built for other hardware, or asked for more than it supports."""


@dataclass(frozen=True)
class RuntimeLimits:
    """What a program supports at run time."""

    max_prefill_tokens: int  # chunk size C of the prefill routine
    max_context: int | None  # dense attention: positions must stay < this; None for Λ (unbounded)
    vocab_size: int
    sinks: int | None
    window: int | None

    def check_run(self, routine: str, n_tokens: int, position: int) -> None:
        """ProgramError unless a run of ``n_tokens`` at ``position`` fits the program."""
        if routine not in ("prefill", "decode"):
            raise ProgramError(f"routine {routine!r} does not exist; a program has 'prefill' and 'decode'")
        limit = self.max_prefill_tokens if routine == "prefill" else 1
        if not 1 <= n_tokens <= limit:
            raise ProgramError(f"{routine} of {n_tokens} tokens: this program's {routine} routine takes 1 to {limit} "
                               f"tokens per run; split the prompt into chunks of at most {limit}")
        if position < 0:
            raise ProgramError(f"position {position} is negative")
        if self.max_context is not None and position + n_tokens > self.max_context:
            raise ProgramError(
                f"positions {position}..{position + n_tokens - 1} exceed the program's context of {self.max_context} "
                "tokens (dense attention keeps every position in the KV buffer); use a shorter prompt and "
                "fewer new tokens, or compile with Λ attention")


@dataclass(frozen=True)
class Program:
    """A loaded, verified program folder."""

    folder: Path
    manifest: dict
    hardware: HardwareConfig
    limits: RuntimeLimits
    tokenizer_dir: Path

    @property
    def shape_only(self) -> bool:
        return bool(self.manifest.get("shape_only"))

    def instructions_bytes(self) -> bytes:
        return (self.folder / INSTRUCTIONS).read_bytes()

    def image_path(self, pc: int) -> Path | None:
        for entry in self.manifest["hbm"]["pcs"]:
            if entry["pc"] == pc and entry.get("file"):
                return self.folder / entry["file"]
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hardware_label(manifest_or_config) -> str:
    """'board u280, engine u280-default (fingerprint 1234abcd5678)' for messages."""
    if isinstance(manifest_or_config, HardwareConfig):
        return f"board {manifest_or_config.board.name} (fingerprint {manifest_or_config.fingerprint()[:12]})"
    m = manifest_or_config
    engine = f", engine {m['engine_preset']}" if m.get("engine_preset") else ""
    return f"board {m['hardware']['board'].get('name', '?')}{engine} (fingerprint {m['hardware_fingerprint'][:12]})"


def write_program(folder: Path | str, compiled, tokenizer_json: str | None, model_name: str,
                  engine_preset: str | None = None) -> dict:
    """Write ``compiled`` (scheduler.Compiled) to ``folder`` through a temporary sibling and a rename."""
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or (folder / MANIFEST).is_file())):
        raise ProgramError(f"output {folder} exists and is not a program folder; choose a new or empty folder with -o")
    shape_only = not compiled.placement.with_images
    with atomic_folder(folder) as tmp:
        (tmp / INSTRUCTIONS).write_bytes(encode_program(compiled.instructions))
        pcs = []
        used = compiled.placement.bytes_per_pc()
        images = None if shape_only else compiled.placement.finish_images(compiled.image_sizes)
        if images is not None:
            (tmp / "hbm").mkdir()
        for pc, size in enumerate(used):
            entry = {"pc": pc, "used_bytes": size, "image_bytes": compiled.image_sizes[pc], "file": None}
            if images is not None and size:
                entry["file"] = f"hbm/pc{pc:02d}.bin"
                (tmp / entry["file"]).write_bytes(images[pc])
            pcs.append(entry)
        used_pcs = [e["pc"] for e in pcs if e["used_bytes"]]
        (tmp / CONNECTIVITY).write_text(connectivity_cfg(compiled.hardware, used_pcs), encoding="utf-8")
        if tokenizer_json is not None:
            (tmp / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
        manifest = build_manifest(compiled, model_name, engine_preset, pcs, shape_only)
        manifest["files"] = {p.relative_to(tmp).as_posix(): _sha256(p)
                             for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    return manifest


def build_manifest(compiled, model_name: str, engine_preset: str | None, pcs: list[dict], shape_only: bool) -> dict:
    plan, memory, hw = compiled.plan, compiled.memory, compiled.hardware
    regions = compiled.placement.regions
    limits = {"max_prefill_tokens": memory.chunk, "max_context": memory.max_context,
              "vocab_size": plan.config.vocab_size, "sinks": plan.recipe.sinks, "window": plan.recipe.window}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "isa": {"version": ISA_VERSION, "word_bytes": WORD_BYTES},
        "shape_only": shape_only,
        "model_name": model_name,
        "config": plan.config.to_dict(),
        "recipe": plan.recipe.to_dict(),
        "engine_preset": engine_preset,
        "hardware": hw.to_dict(),
        "hardware_fingerprint": hw.fingerprint(),
        "routines": {name: {**entry, "max_tokens": memory.chunk if name == "prefill" else 1}
                     for name, entry in compiled.entries.items()},
        "limits": limits,
        "buffers": {b.buffer.name: b.to_dict() for b in memory.maps()},
        "kv": {name: {"mode": lay.mode.name, "bits": lay.bits, "kv_heads": lay.kv_heads, "head_dim": lay.head_dim,
                      "block_tokens": lay.block_tokens, "bytes": lay.nbytes,
                      "capacity": getattr(lay, "capacity", None), "lambda": not hasattr(lay, "capacity")}
               for name, lay in (("keys", memory.keys), ("values", memory.values))},
        "io": {"input_ids": regions["input.ids"].to_dict(), "logits": regions["output.logits"].to_dict()},
        "regions": {name: r.to_dict() for name, r in regions.items()},
        "hbm": {"ports": compiled.placement.ports, "pcs": pcs},
        "embedding_half_zero": compiled.embed_half_zero,
        "report": compiled.report,
    }


def load_program(folder, hardware: HardwareConfig | None = None) -> Program:
    """Read and verify a program folder.

    ProgramError for a missing folder or manifest, another format version, a file whose sha256
    differs from the manifest (naming the file), and — when ``hardware`` is given — a program
    built for another board or engine configuration (naming both).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ProgramError(f"{folder} is not a program folder (no {MANIFEST}); build one with "
                           "`llmfab compile ARTIFACT --board u280 -o PROGRAM`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProgramError(f"{path} is not valid JSON ({err}); the program is damaged, compile it again") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ProgramError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                           f"this llmfab reads {FORMAT} version {FORMAT_VERSION}. Compile the program again")
    for name, digest in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise ProgramError(f"{file} is missing; the program folder is incomplete, compile it again")
        if _sha256(file) != digest:
            raise ProgramError(f"{file} does not match its sha256 in {MANIFEST}; the file was changed or damaged, "
                               "compile the program again")
    try:
        built_for = HardwareConfig.from_dict(manifest["hardware"], origin=str(path))
    except HardwareConfigError as err:
        raise ProgramError(str(err)) from None
    if hardware is not None and hardware.fingerprint() != manifest["hardware_fingerprint"]:
        raise ProgramError(
            f"{folder} was built for {hardware_label(manifest)}, but the hardware given is {hardware_label(hardware)}; "
            "compile the artifact again for this board and engine (llmfab compile --board/--engine)")
    lim = manifest["limits"]
    limits = RuntimeLimits(lim["max_prefill_tokens"], None if lim.get("sinks") is not None else lim["max_context"],
                           lim["vocab_size"], lim.get("sinks"), lim.get("window"))
    return Program(folder, manifest, hardware or built_for, limits, folder)
