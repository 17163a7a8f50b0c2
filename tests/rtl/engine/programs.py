"""Hand-built program folders for the engine tests: a few instructions, HBM images, a manifest the
emulator and `load_program` accept (docs/program_format.md), on a small hardware config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmfab.boards.hardware import HardwareConfig
from llmfab.compiler.isa import WORD_BYTES, Instruction, encode_program
from llmfab.compiler.program import FORMAT, FORMAT_VERSION, ISA_VERSION, Program, load_program


def tiny_hardware(ports: int = 2) -> HardwareConfig:
    """u280-small's board with a tiny engine: 64-bit AXI, 16-beat bursts, 2 SFU lanes (8-byte buffer
    words, as tests/rtl/engine/geometries.TINY), buffers of 4/4/2/1 KiB."""
    base = HardwareConfig.from_preset("u280-small")
    engine = base.engine.replace(hbm_ports=ports, axi_data_width_bits=64, axi_burst_len=16, sfu_lanes=2,
                                 weight_buffer_bytes=4096, activation_buffer_bytes=4096, kv_buffer_bytes=2048,
                                 output_buffer_bytes=1024, decode_lanes=ports * 16)
    return HardwareConfig(board=base.board, engine=engine)


def region(pc: int, offset: int, rows: int, row_bytes: int, stride: int, ports: int = 1, kind: str = "input") -> dict:
    return {"pc": pc, "offset": offset, "rows": rows, "row_bytes": row_bytes, "stride": stride, "ports": ports,
            "kind": kind}


def write_program(folder: Path, hardware: HardwareConfig, instructions: list[Instruction], routines: dict,
                  images: dict[int, bytes], used: dict[int, int], input_ids: dict, logits: dict,
                  max_prefill_tokens: int = 4, max_context: int = 64, vocab_size: int = 16,
                  sinks: int | None = None, window: int | None = None) -> Program:
    """Write a program folder: `routines` name -> (entry, count), `images` pc -> initial bytes, `used`
    pc -> bytes of the pseudo-channel (at least the image). Returns it loaded (checksums verified)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hbm").mkdir(exist_ok=True)
    (folder / "instructions.bin").write_bytes(encode_program(instructions))
    pcs = []
    for pc in range(hardware.engine.hbm_ports):
        image = images.get(pc, b"")
        entry = {"pc": pc, "used_bytes": max(used.get(pc, 0), len(image)), "image_bytes": len(image), "file": None}
        if image:
            entry["file"] = f"hbm/pc{pc:02d}.bin"
            (folder / entry["file"]).write_bytes(image)
        pcs.append(entry)
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "isa": {"version": ISA_VERSION, "word_bytes": WORD_BYTES},
        "shape_only": False, "model_name": "hand-built", "engine_preset": None,
        "hardware": hardware.to_dict(), "hardware_fingerprint": hardware.fingerprint(),
        "routines": {name: {"entry": e, "count": c, "max_tokens": max_prefill_tokens if name == "prefill" else 1}
                     for name, (e, c) in routines.items()},
        "limits": {"max_prefill_tokens": max_prefill_tokens, "max_context": max_context, "vocab_size": vocab_size,
                   "sinks": sinks, "window": window},
        "io": {"input_ids": input_ids, "logits": logits},
        "hbm": {"ports": hardware.engine.hbm_ports, "pcs": pcs},
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return load_program(folder)
