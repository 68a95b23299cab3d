"""PNG charts of a bench result (matplotlib, headless): decode speed, memory, router latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


_COLORS = ["#4C72B0", "#55A868", "#C44E52", "#8172B2", "#CCB974", "#64B5CD", "#8C8C8C", "#DD8452"]


def _bars(ax: Any, labels: list[str], values: list[float], fmt: str) -> None:
    """Horizontal bars (long labels stay readable), first label on top, each value written at its bar's end."""
    positions = list(range(len(values)))[::-1]
    colors = [_COLORS[i % len(_COLORS)] for i in range(len(values))]
    bars = ax.barh(positions, values, color=colors)
    ax.set_yticks(positions, labels, fontsize=8)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f" {fmt.format(value)}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=8
        )
    ax.margins(x=0.15)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_charts(r: dict[str, Any], out_dir: Path) -> list[Path]:
    """decode.png, memory.png and router.png; parts that were skipped are left out."""
    plt = _plt()
    written: list[Path] = []
    g = r["generation"]
    measured = {k: v for k, v in g["variants"].items() if "decode_tok_s" in v}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    _bars(left, [v["label"] for v in measured.values()], [v["decode_tok_s"] for v in measured.values()], "{:.1f}")
    left.set_title(f"decode tokens/s (median of {g['repeats']}, {g['threads']} threads)")
    _bars(right, [v["label"] for v in measured.values()], [v["ttft_s"] for v in measured.values()], "{:.2f}")
    right.set_title(f"time to first token, s ({g['prompt_tokens']}-token prompt)")
    written.append(_save(plt, fig, out_dir / "decode.png"))

    a = r["adapters"]
    if "skipped" not in a:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = ["NF4 base", "base + 1 adapter", "base + 10 adapters", "10 merged NF4", "10 merged bf16 (est.)"]
        one = a["base_delta_mib"] + a["per_adapter_mib"]
        values = [a["base_delta_mib"], one, a["ten_adapters_mib"], a["ten_merged_nf4_mib"], a["ten_merged_mib"]]
        _bars(ax, labels, values, "{:,.0f}")
        ax.set_xlabel("RSS, MiB")
        ax.set_title("resident memory: adapters on one base vs merged models")
        written.append(_save(plt, fig, out_dir / "memory.png"))

    rt = r["router"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [
        "as wired: p50 (one query)",
        "as wired: p95",
        "as wired: encode p50",
        "as wired: classify p50",
        "as wired: per query, batched",
    ]
    values = [
        rt["single_ms_p50"],
        rt["single_ms_p95"],
        rt["encode_ms_p50"],
        rt["classify_ms_p50"],
        rt["batch_ms_per_query"],
    ]
    proto = rt.get("prototype")
    if proto:
        labels += ["prototype: p50 (one query)", "prototype: encode p50", "prototype: classify p50"]
        values += [proto["single_ms_p50"], proto["encode_ms_p50"], proto["classify_ms_p50"]]
    _bars(ax, labels, values, "{:.1f}")
    ax.axvline(rt["target_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("ms (dashed: 10 ms target)")
    ax.set_title("router latency per query")
    written.append(_save(plt, fig, out_dir / "router.png"))
    return written
