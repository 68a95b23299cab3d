"""Router refits for training: the 2-point guard when a route is added, and `train router`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.metrics import ClassificationReport, classification_report
from assistant.router import decide
from assistant.router_fit import (
    FitResult,
    encode_with_progress,
    fit_router,
    fit_thresholds,
    out_of_fold_probabilities,
    save_router,
)
from data.errors import BadInputFile
from data.files import read_data_lines
from data.labels import Example, load_labelled

MAX_DROP = 0.02  # accuracy on the existing labelled data may fall by at most 2 points


class MemoEncoder:
    """Remembers vectors by text: the guard before training and the refit after it encode the same texts."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.name = encoder.name
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            self._memo.update(zip(missing, self._encoder.encode(missing), strict=True))
        if not texts:
            return self._encoder.encode([])
        return np.stack([self._memo[t] for t in texts])


def read_route_examples(path: Path, route: str) -> list[str]:
    """Texts for a route: JSON lines with "text" (any "label" is replaced by the route) or plain lines."""
    texts: list[str] = []
    for number, stripped, obj in read_data_lines(path):
        if obj is not None:
            if not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise BadInputFile(str(path), number, 'expected {"text": ...}')
            stripped = obj["text"].strip()
        texts.append(stripped)
    if not texts:
        raise BadInputFile(str(path), None, f"no examples for route {route!r}")
    return texts


def write_route_examples(path: Path, texts: Sequence[str], route: str) -> int:
    """Write the adapter's route-examples.jsonl ({"text", "label"} lines, de-duplicated)."""
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    path.write_text(
        "".join(json.dumps({"text": t, "label": route}, ensure_ascii=False) + "\n" for t in unique), encoding="utf-8"
    )
    return len(unique)


@dataclass(frozen=True)
class RouterCheck:
    """Cross-validated routing accuracy before and after adding a route's examples."""

    before: float  # on the existing labelled data, current router
    after_existing: float  # on the same data, router refitted with the new examples
    after_all: float  # on everything, refitted router
    added: int  # new examples used (texts already labelled elsewhere are skipped)
    total: int
    report_after: ClassificationReport

    @property
    def drop(self) -> float:
        return self.before - self.after_existing

    def format(self) -> str:
        return (
            f"router accuracy on the existing labelled data (5-fold CV): before {self.before:.1%}, "
            f"after {self.after_existing:.1%} ({-self.drop * 100:+.1f} points); "
            f"on all {self.total} examples incl. {self.added} new: {self.after_all:.1%}"
        )


def _cv_predictions(x: np.ndarray, labels: list[str]) -> list[str]:
    probs, classes = out_of_fold_probabilities(x, labels)
    conf, margin = fit_thresholds(probs, classes, labels)
    return [decide(p, classes, conf, margin)[0] for p in probs]


def check_route(
    encoder: Any, existing: Sequence[Example], route: str, texts: Sequence[str], log: Callable[[str], None]
) -> RouterCheck:
    """Refit with the route's examples added and compare cross-validated accuracy on the existing data."""
    known = {e.text for e in existing}
    added = [Example(t, route, "new") for t in dict.fromkeys(texts) if t not in known]
    everything = [*existing, *added]
    if len({e.label for e in everything}) < 2:
        raise BadInputFile("routing data", None, "the router needs examples of at least two routes")
    x = encode_with_progress(encoder, [e.text for e in everything], log)
    n = len(existing)
    old_labels = [e.label for e in existing]
    before_pred = _cv_predictions(x[:n], old_labels) if len(set(old_labels)) >= 2 else old_labels
    labels = [e.label for e in everything]
    after_pred = _cv_predictions(x, labels)
    before = classification_report(old_labels, before_pred).accuracy
    after_existing = classification_report(old_labels, after_pred[:n]).accuracy
    report = classification_report(labels, after_pred)
    return RouterCheck(before, after_existing, report.accuracy, len(added), len(everything), report)


def refit_and_store(
    encoder: Any, files: Sequence[Path], log: Callable[[str], None], head: str = "linear"
) -> tuple[FitResult, Path]:
    """Fit on exactly the files (and head) the app will load and cache it where the app's loader looks."""
    examples = load_labelled(files)
    result = fit_router(encoder, examples, log, head=head)
    return result, save_router(result.stored)
