"""Fitting the router: cross-validation, abstention thresholds from data, and a fingerprinted cache."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.classifier import HEADS, MLP_L2, Classifier, StoredRouter
from assistant.config import cache_dir
from assistant.encoders import Encoder
from assistant.metrics import ClassificationReport, classification_report
from assistant.router import decide
from data.labels import Example

#: Bump when the fitting procedure changes, so cached routers are refitted.
FIT_VERSION = 2
CONFIDENCE_GRID = tuple(np.round(np.arange(0.50, 0.96, 0.05), 2))
MARGIN_GRID = tuple(np.round(np.arange(0.0, 0.81, 0.1), 2))


@dataclass(frozen=True)
class FitResult:
    """A fitted router and how well it cross-validated."""

    stored: StoredRouter
    cv_report: ClassificationReport
    from_cache: bool = False


def fingerprint(encoder_name: str, examples: Sequence[Example], head: str = "linear") -> str:
    """Identifies a router by its encoder, its head and its exact training data."""
    # The linear head keeps its old key, so the detectors' cached fits (and thresholds) stay valid.
    tag = "" if head == "linear" else f"\x00head={head}"
    digest = hashlib.sha256(f"{FIT_VERSION}\x00{encoder_name}{tag}".encode())
    for ex in sorted(examples, key=lambda e: (e.label, e.text)):
        digest.update(f"\x00{ex.label}\x01{ex.text}".encode())
    return digest.hexdigest()


def stratified_folds(labels: Sequence[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """Stratified fold ids, deterministic."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == label])
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


#: L2 strengths tried by cross-validation; stronger ones generalise better to unseen phrasings.
L2_GRID = (0.01, 0.03, 0.1)


def _fit_head(head: str, x: np.ndarray, labels: Sequence[str], l2: float) -> Classifier:
    """The named head (`HEADS`) fitted at this L2."""
    return HEADS[head].fit(x, labels, l2=l2)


def out_of_fold_probabilities(
    x: np.ndarray, labels: Sequence[str], k: int = 5, l2: float = 0.01, head: str = "linear"
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each example scored by a classifier that never saw it."""
    classes = tuple(sorted(set(labels)))
    probs = np.zeros((len(labels), len(classes)))
    y = np.array(labels)
    for held in stratified_folds(labels, k):
        train = np.setdiff1d(np.arange(len(labels)), held)
        clf = _fit_head(head, x[train], list(y[train]), l2)
        cols = np.array([classes.index(c) for c in clf.classes])
        probs[np.ix_(held, cols)] = clf.predict_proba(x[held])
    return probs, classes


def balanced_accuracy(labels: Sequence[str], predicted: Sequence[str]) -> float:
    """Mean per-route recall: each route counts the same, however many examples it has."""
    routes = sorted(set(labels))
    hits = {r: [p == t for t, p in zip(labels, predicted, strict=True) if t == r] for r in routes}
    return float(np.mean([np.mean(h) for h in hits.values()]))


def fit_thresholds(probs: np.ndarray, classes: Sequence[str], labels: Sequence[str]) -> tuple[float, float]:
    """Pick the abstention thresholds with the best balanced accuracy on out-of-fold scores.

    Ties go to the smallest thresholds, so the router abstains only when the data says it helps.
    """
    best = (-1.0, 0.0, 0.0)
    for conf in CONFIDENCE_GRID:
        for margin in MARGIN_GRID:
            predicted = [decide(p, classes, float(conf), float(margin))[0] for p in probs]
            score = balanced_accuracy(labels, predicted)
            if score > best[0] + 1e-9:
                best = (score, float(conf), float(margin))
    return best[1], best[2]


def encode_with_progress(
    encoder: Encoder, texts: Sequence[str], log: Callable[[str], None], batch: int = 128
) -> np.ndarray:
    """Encode many texts in batches, reporting progress (the first fit encodes a few thousand)."""
    parts = []
    for start in range(0, len(texts), batch):
        parts.append(encoder.encode(texts[start : start + batch]))
        log(f"\rencoding routing examples {min(start + batch, len(texts))}/{len(texts)}")
    log("\n")
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def fit_router(
    encoder: Encoder,
    examples: Sequence[Example],
    log: Callable[[str], None] | None = None,
    folds: int = 5,
    head: str = "linear",
) -> FitResult:
    """Fit the classifier on all examples, with thresholds and a report from k-fold cross-validation.

    `head` is "linear" (L2 chosen by cross-validation) or "mlp" (`assistant.classifier.MlpClassifier`).
    """
    if head not in HEADS:
        raise ValueError(f"unknown router head {head!r}: choose one of {sorted(HEADS)}")
    log = log or (lambda s: None)
    labels = [e.label for e in examples]
    if len(set(labels)) < 2:
        raise ValueError("the router needs examples of at least two routes")
    x = encode_with_progress(encoder, [e.text for e in examples], log)
    best: tuple[float, float, np.ndarray, tuple[str, ...]] | None = None
    for l2 in L2_GRID if head == "linear" else (MLP_L2,):
        oof, oof_classes = out_of_fold_probabilities(x, labels, folds, l2, head)
        top = [oof_classes[i] for i in oof.argmax(axis=1)]
        score = balanced_accuracy(labels, top)
        log(f"router: {head} head, l2={l2:g}, cross-validated balanced accuracy {score:.1%}\n")
        if best is None or score > best[0] + 1e-9:
            best = (score, l2, oof, oof_classes)
    assert best is not None
    _, l2, probs, classes = best
    min_conf, min_margin = fit_thresholds(probs, classes, labels)
    cv_predicted = [decide(p, classes, min_conf, min_margin)[0] for p in probs]
    report = classification_report(labels, cv_predicted)
    stored = StoredRouter(
        classifier=_fit_head(head, x, labels, l2),
        min_confidence=min_conf,
        min_margin=min_margin,
        encoder_name=encoder.name,
        fingerprint=fingerprint(encoder.name, examples, head),
        example_texts=[e.text for e in examples],
        example_labels=labels,
        example_vectors=x.astype(np.float16),
        metrics={
            "cv_accuracy": report.accuracy,
            "folds": folds,
            "l2": l2,
            "head": head,
            "examples": len(examples),
            **report.as_dict(),
        },
    )
    return FitResult(stored, report)


def router_cache_dir() -> Path:
    return cache_dir() / "router"


def save_router(stored: StoredRouter, folder: Path | None = None) -> Path:
    """Write atomically: a crash leaves the previous router, never a half-written one."""
    folder = folder or router_cache_dir() / stored.fingerprint[:16]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".router.", dir=folder.parent))
    try:
        stored.save(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_or_fit_router(
    encoder: Encoder,
    examples: Sequence[Example],
    log: Callable[[str], None] | None = None,
    what: str = "router",
    head: str = "linear",
) -> FitResult:
    """The cached router for exactly this encoder, head and data, fitted (and cached) when missing or damaged."""
    log = log or (lambda s: print(s, end="", file=sys.stderr, flush=True))
    key = fingerprint(encoder.name, examples, head)
    folder = router_cache_dir() / key[:16]
    try:
        stored = StoredRouter.load(folder)
        if stored.fingerprint == key:
            report_dict = stored.metrics
            report = ClassificationReport(
                float(report_dict.get("cv_accuracy", 0.0)), {}, tuple(report_dict.get("labels", ())), ()
            )
            return FitResult(stored, report, from_cache=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        pass  # missing or damaged: refit below
    log(f"fitting the {what} on {len(examples)} labelled examples (once; cached afterwards)\n")
    result = fit_router(encoder, examples, log, head=head)
    save_router(result.stored, folder)
    return result
