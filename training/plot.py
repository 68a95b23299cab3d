"""The loss plot saved beside each adapter: training loss per step and validation loss, PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def save_loss_plot(
    path: Path,
    train: Sequence[Sequence[float]],
    val: Sequence[Sequence[float]],
    title: str,
    best_step: int | None = None,
) -> Path:
    """Write a PNG of [step, loss] series; headless (Agg), so it works over SSH and in CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = [s for s, _ in train], [v for _, v in train]
        ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="train (per step)")
        if len(losses) >= 5:
            ax.plot(steps, _smooth(losses, 10), color="#3182bd", linewidth=1.6, label="train (10-step mean)")
    points = [(s, v) for s, v in val if not math.isnan(v)]
    if points:
        ax.plot(
            [s for s, _ in points], [v for _, v in points], "o-", color="#e6550d", linewidth=1.6, label="validation"
        )
    if best_step is not None and points:
        ax.axvline(best_step, color="#636363", linestyle="--", linewidth=0.8, label=f"kept (step {best_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
