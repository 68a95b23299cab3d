"""PNG charts of a bench result (matplotlib, headless): decode speed, memory, router latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, labels: list[str], values: list[float], fmt: str) -> None:
    bars = ax.bar(
        labels, values, color=["#4C72B0", "#55A868", "#C44E52", "#8172B2", "#CCB974", "#64B5CD"][: len(values)]
    )
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            fmt.format(value),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.tick_params(axis="x", labelsize=8, rotation=15)


def write_charts(r: dict[str, Any], out_dir: Path) -> list[Path]:
    """decode.png, memory.png and router.png; parts that were skipped are left out."""
    plt = _plt()
    written: list[Path] = []
    g = r["generation"]
    measured = {k: v for k, v in g["variants"].items() if "decode_tok_s" in v}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _bars(left, [v["label"] for v in measured.values()], [v["decode_tok_s"] for v in measured.values()], "{:.1f}")
    left.set_title(f"decode tokens/s (median of {g['repeats']}, {g['threads']} threads)")
    _bars(right, [v["label"] for v in measured.values()], [v["ttft_s"] for v in measured.values()], "{:.2f}")
    right.set_title(f"time to first token, s ({g['prompt_tokens']}-token prompt)")
    fig.tight_layout()
    written.append(out_dir / "decode.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    a = r["adapters"]
    if "skipped" not in a:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = ["NF4 base", "base + 1 adapter", "base + 10 adapters", "10 merged NF4", "10 merged bf16 (est.)"]
        one = a["base_delta_mib"] + a["per_adapter_mib"]
        values = [a["base_delta_mib"], one, a["ten_adapters_mib"], a["ten_merged_nf4_mib"], a["ten_merged_mib"]]
        _bars(ax, labels, values, "{:,.0f}")
        ax.set_ylabel("RSS, MiB")
        ax.set_title("resident memory: adapters on one base vs merged models")
        fig.tight_layout()
        written.append(out_dir / "memory.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    rt = r["router"]
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(
        ax,
        ["p50 (one query)", "p95 (one query)", "encode p50", "classify p50", "per query, batched"],
        [
            rt["single_ms_p50"],
            rt["single_ms_p95"],
            rt["encode_ms_p50"],
            rt["classify_ms_p50"],
            rt["batch_ms_per_query"],
        ],
        "{:.1f}",
    )
    ax.axhline(rt["target_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("ms")
    ax.set_title(f"router latency ({rt['encoder']})")
    fig.tight_layout()
    written.append(out_dir / "router.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written
