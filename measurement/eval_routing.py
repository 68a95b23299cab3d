"""Routing quality on a labelled file: accuracy, per-route P/R/F1, confusion, abstention and per-query latency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from assistant.metrics import ClassificationReport, classification_report
from assistant.router import RouteChoice
from data.labels import Example


class TimedRouter(Protocol):
    """What the evaluation needs from a router (the real Router, or a fake in tests)."""

    def timed_route(self, text: str) -> tuple[RouteChoice, float]: ...


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks, as numpy's default does."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Misroute:
    """One query the router sent somewhere other than its label."""

    source: str
    text: str
    label: str
    choice: RouteChoice

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "text": self.text,
            "label": self.label,
            "predicted_top": self.choice.predicted or self.choice.route,
            **self.choice.as_json(),
        }

    def format(self) -> str:
        c = self.choice
        how = f" (abstained from {c.predicted})" if c.abstained else ""
        scores = ", ".join(f"{x.route} {x.score:.3f}" for x in c.candidates)
        return (
            f"  {self.source}  true={self.label}  got={c.route}{how}  confidence={c.confidence:.3f} "
            f"margin={c.margin:.3f}  [{scores}]\n    {self.text}"
        )


@dataclass(frozen=True)
class RoutingEval:
    """Everything `eval routing` reports."""

    report: ClassificationReport
    queries: int
    abstained: int
    latencies_ms: tuple[float, ...]
    errors: tuple[Misroute, ...]
    seen_in_training: int  # eval texts the router was fitted on: their scores are optimistic
    unknown_labels: tuple[str, ...]  # labels the router has no route for: always counted as wrong

    @property
    def abstention_rate(self) -> float:
        return self.abstained / self.queries if self.queries else 0.0

    @property
    def latency_p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def latency_p95_ms(self) -> float:
        return percentile(self.latencies_ms, 95)

    def as_dict(self, show_errors: bool = False) -> dict[str, object]:
        """The `eval routing --json` object."""
        out: dict[str, Any] = {
            "queries": self.queries,
            **self.report.as_dict(),
            "abstained": self.abstained,
            "abstention_rate": self.abstention_rate,
            "latency_ms": {
                "p50": self.latency_p50_ms,
                "p95": self.latency_p95_ms,
                "mean": sum(self.latencies_ms) / len(self.latencies_ms),
            },
            "misrouted": len(self.errors),
            "seen_in_training": self.seen_in_training,
            "unknown_labels": list(self.unknown_labels),
        }
        if show_errors:
            out["errors"] = [e.as_dict() for e in self.errors]
        return out

    def format(self, show_errors: bool = False) -> str:
        """Plain text for a terminal."""
        lines = [self.report.format(), ""]
        lines.append(
            f"abstention: {self.abstained}/{self.queries} ({self.abstention_rate:.1%}) sent to general "
            "because the top route was not sure enough"
        )
        lines.append(
            f"latency per query (encode + classify): p50 {self.latency_p50_ms:.1f} ms, "
            f"p95 {self.latency_p95_ms:.1f} ms over {self.queries} queries"
        )
        if self.seen_in_training:
            lines.append(
                f"note: {self.seen_in_training} of these queries are in the router's training data; "
                "held-out data gives honest scores"
            )
        if self.unknown_labels:
            lines.append(
                f"note: no installed route for label(s) {', '.join(self.unknown_labels)}; "
                "those queries always count as misrouted"
            )
        if show_errors:
            lines += ["", f"misrouted ({len(self.errors)}):", *(e.format() for e in self.errors)]
        elif self.errors:
            lines.append(f"{len(self.errors)} misrouted; --show-errors lists them")
        return "\n".join(lines)


def evaluate_routing(router: TimedRouter, examples: Sequence[Example]) -> RoutingEval:
    """Route every example one at a time (as the chat does) and score the routes against the labels."""
    if not examples:
        raise ValueError("no labelled examples to evaluate")
    # The first call pays one-off costs (thread pools, lazy buffers); it is not a per-query figure.
    router.timed_route(examples[0].text)
    choices: list[RouteChoice] = []
    latencies: list[float] = []
    for example in examples:
        choice, ms = router.timed_route(example.text)
        choices.append(choice)
        latencies.append(ms)
    truth = [e.label for e in examples]
    report = classification_report(truth, [c.route for c in choices])
    errors = tuple(
        Misroute(e.source, e.text, e.label, c) for e, c in zip(examples, choices, strict=True) if c.route != e.label
    )
    stored = getattr(router, "stored", None)
    trained_on = set(getattr(stored, "example_texts", ()) or ())
    known = set(getattr(router, "classes", ()) or ())
    unknown = tuple(sorted(set(truth) - known)) if known else ()
    return RoutingEval(
        report=report,
        queries=len(examples),
        abstained=sum(c.abstained for c in choices),
        latencies_ms=tuple(latencies),
        errors=errors,
        seen_in_training=sum(e.text in trained_on for e in examples),
        unknown_labels=unknown,
    )
