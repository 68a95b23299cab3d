"""Classification metrics for routing: accuracy, per-route precision/recall/F1, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RouteScores:
    """Precision, recall and F1 of one route."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """What `eval routing` and `train router` print."""

    accuracy: float
    per_route: dict[str, RouteScores]
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true label, columns: predicted

    def as_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "per_route": {k: vars(v) for k, v in self.per_route.items()},
            "labels": list(self.labels),
            "confusion": [list(r) for r in self.confusion],
        }

    def format(self) -> str:
        """A plain-text table for terminals."""
        corner = "true \\ predicted"
        width = max(len(x) for x in (*self.labels, corner))
        lines = [f"accuracy {self.accuracy:.1%}", "", f"{'route':<{width}}  precision  recall     f1  support"]
        for name, s in self.per_route.items():
            lines.append(f"{name:<{width}}  {s.precision:9.1%}  {s.recall:6.1%}  {s.f1:5.3f}  {s.support:7d}")
        lines += [
            "",
            "confusion (rows: true, columns: predicted)",
            f"{corner:<{width}}  " + "  ".join(f"{x:>10}" for x in self.labels),
        ]
        for name, row in zip(self.labels, self.confusion, strict=True):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>10d}" for v in row))
        return "\n".join(lines)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def classification_report(truth: Sequence[str], predicted: Sequence[str]) -> ClassificationReport:
    """Score predictions against true labels; routes seen on either side are reported."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predictions differ in length")
    labels = tuple(sorted(set(truth) | set(predicted)))
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        confusion[index[t]][index[p]] += 1
    per_route: dict[str, RouteScores] = {}
    for label, i in index.items():
        tp = confusion[i][i]
        predicted_as = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        precision, recall = _ratio(tp, predicted_as), _ratio(tp, support)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_route[label] = RouteScores(precision, recall, f1, support)
    correct = sum(confusion[i][i] for i in range(len(labels)))
    return ClassificationReport(_ratio(correct, len(truth)), per_route, labels, tuple(tuple(r) for r in confusion))
