"""What the meaning detectors beside the care rules share: their labelled examples file and their cached threshold."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from assistant.classifier import StoredRouter
from assistant.router_fit import out_of_fold_probabilities, router_cache_dir
from data.errors import BadInputFile
from data.labels import Example, load_labelled_file


def load_detector_examples(path: Path, labels: Sequence[str]) -> list[Example]:
    """A detector's labelled questions; a line with a label not in `labels` names the file and line."""
    examples = load_labelled_file(path)
    for example in examples:
        if example.label not in labels:
            line = example.source.rpartition(":")[2]
            number = int(line) if line.isdigit() else None
            raise BadInputFile(str(path), number, f"label {example.label!r}", f"use {' or '.join(labels)}")
    return examples


def out_of_fold_scores(stored: StoredRouter, positive: str, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Each stored example's out-of-fold probability of `positive` (same L2 as the fit), and which are `positive`."""
    labels = stored.example_labels
    l2 = float(stored.metrics.get("l2", 0.01))
    probs, classes = out_of_fold_probabilities(stored.example_vectors.astype(np.float32), labels, folds, l2)
    return probs[:, classes.index(positive)], np.array([label == positive for label in labels])


def written_negatives(stored: StoredRouter, written: Sequence[str], is_positive: np.ndarray) -> np.ndarray:
    """Which stored examples are negatives from the detector's own written file (the hard ones)."""
    own = set(written)
    return np.array([text in own for text in stored.example_texts]) & ~is_positive


def threshold_path(stored: StoredRouter, file_name: str) -> Path:
    """Where a detector's cross-validated threshold is kept: beside its fitted classifier in the router cache."""
    return router_cache_dir() / stored.fingerprint[:16] / file_name


def cached_figures(
    path: Path, compute: Callable[[], dict[str, float]], expect: dict[str, float] | None = None
) -> dict[str, float]:
    """The figures stored at `path`, or `compute()`d and stored there when missing, damaged or stale.

    `expect` names figures the stored ones must carry unchanged (the rule that chose the threshold),
    so a changed rule recomputes instead of reusing a threshold chosen by the old one.
    """
    try:
        figures = {k: float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        if "threshold" in figures and all(figures.get(k) == v for k, v in (expect or {}).items()):
            return figures
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # missing or damaged: computed again below
    figures = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures), encoding="utf-8")
    tmp.replace(path)
    return figures
