"""The PNG figures of `llmfab report` (matplotlib, no display needed).

Each function takes already computed data (sim/report.py gathers it) and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def roofline(path: Path, roofs: dict, points: list[dict]) -> None:
    """Ops/s against operational intensity (ops per HBM byte): the HBM roofs (peak and sustained),
    one compute ceiling per datapath, and the achieved points."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    intensity = np.geomspace(0.1, 1e4, 200)
    ceiling = max(roofs["compute_ops_per_s"].values())
    ax.loglog(intensity, np.minimum(roofs["hbm_peak_bytes_per_s"] * intensity, ceiling), "k-", label="HBM peak")
    ax.loglog(intensity, np.minimum(roofs["hbm_sustained_bytes_per_s"] * intensity, ceiling), "k--",
              label="HBM sustained (model)")
    ceilings: dict[float, list[str]] = {}
    for name, ops in roofs["compute_ops_per_s"].items():
        ceilings.setdefault(ops, []).append(name)
    for ops, names in ceilings.items():
        ax.axhline(ops, linestyle=":", linewidth=1, color="tab:gray")
        ax.text(intensity[-1], ops, " " + " = ".join(names), va="bottom", ha="right", fontsize=8)
    for p in points:
        ax.loglog(p["intensity"], p["ops_per_s"], "o", markersize=8, label=p["label"])
    top = max(roofs["compute_ops_per_s"].values()) * 3
    ax.set_ylim(top / 1e5, top)
    ax.set_xlabel("operational intensity (ops per HBM byte)")
    ax.set_ylabel("ops per second")
    ax.set_title("Roofline: achieved against HBM and compute bounds")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.2)
    _save(fig, path)


def layer_breakdown(path: Path, parts: dict, opcodes: dict) -> None:
    """Cycles of each model part (critical path) and busy cycles per instruction class."""
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6))
    names = list(parts)
    a.bar(range(len(names)), [parts[n] / 1e3 for n in names], color="tab:blue")
    ticks = [i for i, n in enumerate(names) if not n.startswith("layer") or int(n.split()[1]) % 4 == 0]
    short = {"embedding": "emb"}
    a.set_xticks(ticks, [short.get(names[i], names[i].replace("layer ", "L")) for i in ticks], fontsize=8)
    a.set_ylabel("kilocycles")
    a.set_title("Decode step: time per model part")
    items = sorted(((k, v) for k, v in opcodes.items() if v > 0), key=lambda kv: -kv[1])
    b.barh([k for k, _ in items], [v / 1e3 for _, v in items], color="tab:orange")
    b.invert_yaxis()
    b.set_xlabel("busy kilocycles (units overlap, so these add up to more than the step)")
    b.set_title("Busy cycles per instruction class")
    _save(fig, path)


def context_sweep(path: Path, curves: dict[str, list[dict]], roofline_rows: list[dict] | None = None) -> None:
    """Decode tokens/s against context; hollow markers where the cache would not fit in HBM or
    past the KV buffer (extrapolated as streamed)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in curves.items():
        xs = [r["context"] for r in rows]
        ys = [r["decode_tokens_per_s"] for r in rows]
        line, = ax.semilogx(xs, ys, "-", label=label)
        for r in rows:
            fits = r["fits_hbm"] and r["fits_buffer"]
            ax.plot(r["context"], r["decode_tokens_per_s"], "o", color=line.get_color(),
                    markerfacecolor=line.get_color() if fits else "none")
    if roofline_rows:
        ax.semilogx([r["context"] for r in roofline_rows], [r["tokens_per_s"] for r in roofline_rows], "k--",
                    linewidth=1, label="HBM roofline (Λ traffic)")
    ax.set_xlabel("context (tokens already cached)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("Decode rate against context\n(hollow: KV past the on-chip buffer or HBM, extrapolated)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.2)
    _save(fig, path)


def prefill_sweep(path: Path, rows: list[dict]) -> None:
    """Prefill tokens/s and latency against prompt length."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [r["prompt_tokens"] for r in rows]
    ax.semilogx(xs, [r["prefill_tokens_per_s"] for r in rows], "o-", color="tab:green", label="tokens/s")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("prefill tokens/s", color="tab:green")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.loglog(xs, [r["prefill_seconds"] for r in rows], "s--", color="tab:purple", label="latency")
    twin.set_ylabel("prefill latency (s)", color="tab:purple")
    ax.set_title("Prefill against prompt length")
    ax.grid(True, alpha=0.2)
    _save(fig, path)


def design_sweep(path: Path, sizes: list[int], clocks: list[float], decode: np.ndarray, prefill: np.ndarray,
                 fits: np.ndarray) -> None:
    """Two heat maps over prefill PE array size x clock; configurations that do not fit are crossed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, data, title in ((axes[0], decode, "decode tokens/s"), (axes[1], prefill, "prefill tokens/s (one chunk)")):
        image = ax.imshow(data, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(clocks)), [f"{c:g}" for c in clocks])
        ax.set_yticks(range(len(sizes)), [f"{s}x{s}" for s in sizes])
        ax.set_xlabel("clock (MHz)")
        ax.set_ylabel("prefill PE array")
        ax.set_title(title)
        for i in range(len(sizes)):
            for j in range(len(clocks)):
                text = f"{data[i, j]:.0f}" if fits[i, j] else f"{data[i, j]:.0f}\nno fit"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if fits[i, j] else "red")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle("Design sweep on the board (same program; clock and array change)")
    _save(fig, path)
