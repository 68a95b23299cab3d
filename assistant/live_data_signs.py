"""Recognises questions that ask for live data (weather now, the time, today's news, open today) by meaning.

Why: the live-data rule answers such a question alone, so the model never invents a temperature;
but its regex misses paraphrases ("今朝落雨伐", "is the clinic open on this holiday"), and then
the model makes the figure up. This classifier is fitted on data/safety/live-data-examples.jsonl
(live questions told many ways, and hard negatives: care questions that mention the weather or
the time, climate, how to find opening hours) plus the router's questions, with the search encoder.
Precision comes first: a false flag replaces a whole care answer with "I can't access live
information", so the threshold keeps out-of-fold false alarms on the negatives at or under 1%.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.care_rules import classify
from assistant.classifier import StoredRouter
from assistant.encoders import Encoder
from assistant.router_fit import load_or_fit_router
from assistant.sign_detector import (
    cached_figures,
    load_detector_examples,
    out_of_fold_scores,
    threshold_path,
    written_negatives,
)
from data import DATA_DIR
from data.labels import Example

LIVE = "live"
OTHER = "other"
EXAMPLES_FILE = DATA_DIR / "safety" / "live-data-examples.jsonl"
#: Out-of-fold false-alarm rate on the negatives the threshold may not exceed. It was 0.5%; at that
#: limit the threshold rose with every change of the routing data (0.76, 0.77, 0.83), and at 0.83 the
#: care route missed "whats the AQI in Shanghai right now? dad has COPD..." (score 0.745) and answered
#: it with an invented AQI and an invented web address. A missed live question invents facts; a false
#: flag costs a care answer, not a fact, so 1% (threshold 0.69 on the 2026-12-02 data).
FALSE_ALARM_LIMIT = 0.01
THRESHOLD_GRID = tuple(float(t) for t in np.round(np.arange(0.30, 0.991, 0.01), 2))
_THRESHOLD_FILE = "live-data-threshold.json"


def load_examples(path: Path = EXAMPLES_FILE) -> list[Example]:
    """The detector's labelled questions; a line with another label names the file and line."""
    return load_detector_examples(path, (LIVE, OTHER))


def detector_examples(own: Sequence[Example], routing: Sequence[Example] = ()) -> list[Example]:
    """The written examples, plus every routing question the live rule does not flag, as negatives.

    Both routes are taken: care questions are where a false flag costs most (the whole answer is
    replaced). Lines the LIVE regex flags are left out, since some of them do ask for live data.
    """
    written = {e.text for e in own}
    everyday = [
        Example(e.text, OTHER, e.source) for e in routing if e.text not in written and not classify(e.text).live
    ]
    return [*own, *everyday]


def choose_threshold(scores: np.ndarray, is_live: np.ndarray, limit: float = FALSE_ALARM_LIMIT) -> float:
    """The lowest threshold on the grid whose false-alarm rate on `scores` (out-of-fold) stays within `limit`."""
    negatives = scores[~is_live]
    for threshold in THRESHOLD_GRID:
        if not negatives.size or float(np.mean(negatives >= threshold)) <= limit:
            return threshold
    return max(THRESHOLD_GRID)


def cross_validated_threshold(stored: StoredRouter, written: Sequence[str] = (), folds: int = 5) -> dict[str, float]:
    """The threshold chosen on out-of-fold scores of the stored examples, with its recall and false alarms there.

    False alarms are also given on the `written` negatives alone (the hard ones), and recall for
    the live regex alone and the regex or the detector, on the written live questions.
    """
    scores, is_live = out_of_fold_scores(stored, LIVE, folds)
    threshold = choose_threshold(scores, is_live)
    flagged = scores >= threshold
    by_rules = np.array([classify(text).live for text in stored.example_texts])
    hard = written_negatives(stored, written, is_live)
    return {
        "threshold": threshold,
        "cv_recall": float(np.mean(flagged[is_live])),
        "cv_recall_rules": float(np.mean(by_rules[is_live])),
        "cv_recall_with_rules": float(np.mean((flagged | by_rules)[is_live])),
        "cv_false_alarms": float(np.mean(flagged[~is_live])),
        "cv_false_alarms_written": float(np.mean(flagged[hard])) if hard.any() else 0.0,
        "negatives": float(np.sum(~is_live)),
        "negatives_written": float(np.sum(hard)),
        "folds": folds,
        "false_alarm_limit": FALSE_ALARM_LIMIT,
    }


@dataclass(frozen=True)
class LiveDataSigns:
    """A fitted two-class classifier on `encoder`'s vectors; live data asked for at probability >= threshold."""

    stored: StoredRouter
    encoder: Encoder
    threshold: float = 0.5
    cv: dict[str, float] | None = None  # the threshold's out-of-fold figures on the examples

    def score(self, question: str) -> float:
        """Probability that the question asks for live data, from one vector of the whole question.

        The whole question only (unlike the emergency detector's sentence by sentence): a live
        question is usually short, and scoring each sentence would add false flags, the costly error here.
        """
        classifier = self.stored.classifier
        vector = self.encoder.encode([question])
        return float(classifier.predict_proba(vector)[0, classifier.classes.index(LIVE)])

    def flags(self, question: str) -> bool:
        """Whether the question asks for live data, by meaning."""
        return self.score(question) >= self.threshold


def load_or_fit_live_data_signs(
    encoder: Encoder,
    examples: Sequence[Example] | None = None,
    log: Callable[[str], None] | None = None,
    routing: Sequence[Example] = (),
) -> LiveDataSigns:
    """The detector for this encoder and data: fitted and its threshold cross-validated once, then cached.

    `examples` defaults to data/safety/live-data-examples.jsonl; `routing` (the router's labelled
    data) adds its questions as negatives.
    """
    log = log or (lambda s: print(s, end="", file=sys.stderr, flush=True))
    own = load_examples() if examples is None else list(examples)
    fitted = load_or_fit_router(encoder, detector_examples(own, routing), log, what="live-data detector")
    path = threshold_path(fitted.stored, _THRESHOLD_FILE)
    chosen = cached_figures(
        path,
        lambda: cross_validated_threshold(fitted.stored, [e.text for e in own]),
        expect={"false_alarm_limit": FALSE_ALARM_LIMIT},
    )
    return LiveDataSigns(fitted.stored, encoder, chosen["threshold"], chosen)
