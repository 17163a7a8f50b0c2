"""Plain-text rendering of the cycle model's summary (sim/performance.summary) for the CLI."""

from __future__ import annotations


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def format_summary(s: dict) -> str:
    """A few aligned sections: headline, bounds, power, per-layer and per-opcode cycles."""
    attention = "Λ" if s["lambda_attention"] else "dense"
    lines = [
        f"{s['model']}, recipe {s['recipe']} ({attention} attention) on {s['board']} at {s['clock_mhz']:g} MHz, "
        f"{s['datapath']} datapath",
        "",
        f"decode at context {s['context']:,}: {s['decode_tokens_per_s']:,.1f} tokens/s "
        f"({s['decode_seconds'] * 1e3:,.2f} ms, {s['decode_cycles']:,.0f} cycles)",
        f"prefill of {s['prompt_tokens']:,} tokens: {s['prefill_seconds']:,.3f} s = {s['prefill_tokens_per_s']:,.1f} "
        f"tokens/s (chunks of {s['prefill_chunk_tokens']}, {s['prefill_chunks_timed']} timed)",
        f"HBM bytes per token: {s['hbm_bytes_per_token'] / 1e6:,.1f} MB ("
        + ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in sorted(s["hbm_bytes_by_kind"].items())) + ")",
        f"HBM utilisation: {s['hbm_utilization']:.1%} of peak; compute utilisation: "
        + ", ".join(f"{k} {v:.1%}" for k, v in s["compute_utilization"].items()),
        "",
        "bounds (tokens/s): HBM roofline " + _rate(s["hbm_roofline_tokens_per_s"])
        + ", sustained HBM " + _rate(s["hbm_sustained_tokens_per_s"])
        + ", compute " + _rate(s["compute_bound_tokens_per_s"]),
        f"power: {s['power_w']:.1f} W ({s['power']['static_w']:.1f} static + "
        + ", ".join(f"{k} {v:.1f}" for k, v in s["power"]["dynamic_w"].items() if v >= 0.05)
        + f"); {s['tokens_per_joule']:.2f} tokens/J",
    ]
    layers = s["cycles_by_layer"]
    if layers:
        body = [v for k, v in layers.items() if k.startswith("layer")]
        lines += ["", f"cycles per part: embedding {layers.get('embedding', 0):,.0f}, decoder layers "
                  f"{min(body):,.0f} .. {max(body):,.0f} (mean {sum(body) / len(body):,.0f}), head {layers.get('head', 0):,.0f}"]
    lines += ["", "cycles per instruction class, request latencies included (count):"]
    for name, cycles in sorted(s["cycles_by_opcode"].items(), key=lambda kv: -kv[1]):
        if name != "END":
            lines.append(f"  {name:<10} {cycles:>14,.0f}  ({s['instructions_by_opcode'][name]:,})")
    lines.append("busy cycles per unit: " + ", ".join(f"{k} {v:,.0f}" for k, v in s["busy_cycles_by_unit"].items()))
    if s["warnings"]:
        lines += ["", "warnings (the figures assume hardware that does not exist as configured):"]
        lines += [f"  {w}" for w in s["warnings"]]
    return "\n".join(lines)
