"""Routing candidates side by side: heads on the published encoder and on one tuned for routing, with and without
abstention thresholds, scored by cross-validation on the training data and then once on the held-out sets.

Run: `python -m measurement.routing_candidates [--json FILE]` (about half an hour on two busy cores: the
tuned encoder is tuned once per fold). Choices are made on the cross-validation columns; the held-out
columns are printed for the record, never to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.config import Settings
from assistant.router import decide
from assistant.router_fit import fit_router
from data.labels import HELDOUT_DIR, Example, load_labelled
from measurement.mlp_head import MlpHead

HELD_OUT_FILE = "written-real-users.jsonl"  # the training file most like real users: held out whole in `lofo`
Predict = Callable[[np.ndarray], list[str]]


class _Table:
    """An encoder answering from vectors computed beforehand (fit_router encodes through it)."""

    def __init__(self, name: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.name = name
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]


@dataclass(frozen=True)
class Candidate:
    name: str
    tuned: bool  # vectors from the encoder tuned on the training part
    head: str  # "linear" (the product's fit: L2 and thresholds by CV) or "mlp"
    thresholds: bool


CANDIDATES = (
    Candidate("linear head + thresholds (baseline)", False, "linear", True),
    Candidate("linear head, no thresholds", False, "linear", False),
    Candidate("MLP head", False, "mlp", False),
    Candidate("tuned encoder + linear head + thresholds", True, "linear", True),
    Candidate("tuned encoder + linear head, no thresholds", True, "linear", False),
    Candidate("tuned encoder + MLP head", True, "mlp", False),
)


def fit_heads(x: np.ndarray, examples: Sequence[Example]) -> dict[tuple[str, bool], Predict]:
    """Every head fitted on (x, examples), as predictors of route names."""
    table = _Table("candidates", [e.text for e in examples], x)
    stored = fit_router(table, examples).stored
    classes = stored.classifier.classes

    def linear(thresholds: bool) -> Predict:
        conf, margin = (stored.min_confidence, stored.min_margin) if thresholds else (0.0, 0.0)
        return lambda v: [decide(p, classes, conf, margin)[0] for p in stored.classifier.predict_proba(v)]

    mlp = MlpHead.fit(x, [e.label for e in examples])
    return {
        ("linear", True): linear(True),
        ("linear", False): linear(False),
        ("mlp", False): lambda v: mlp.predict(v),
    }


def _folds(labels: Sequence[str], k: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        idx = np.flatnonzero(np.array(labels) == label)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


class Vectors:
    """Vectors of every text under the published encoder, and under encoders tuned on given training parts."""

    def __init__(self, texts: Sequence[str], log: Callable[[str], None]) -> None:
        from adapters.bundled_encoder import prepare_bundled_encoder
        from adapters.fast_encoder import FastE5Encoder

        self.texts = list(dict.fromkeys(texts))
        self.log = log
        self.base = FastE5Encoder(prepare_bundled_encoder(), name="base")
        self.base_vectors = self._encode(self.base)
        self.tuning_seconds: list[float] = []

    def _encode(self, encoder: Any) -> np.ndarray:
        return np.concatenate([encoder.encode(self.texts[i : i + 64]) for i in range(0, len(self.texts), 64)])

    def lookup(self, vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        rows = {t: i for i, t in enumerate(self.texts)}
        return vectors[[rows[t] for t in texts]]

    def tuned_on(self, examples: Sequence[Example]) -> np.ndarray:
        from adapters.encoder_tuning import merge, tune_layers
        from adapters.routing_encoder import DEFAULT_RECIPE

        started = time.perf_counter()
        factors = tune_layers(self.base, [e.text for e in examples], [e.label for e in examples], DEFAULT_RECIPE)
        self.tuning_seconds.append(time.perf_counter() - started)
        self.log(f"tuned on {len(examples)} examples in {self.tuning_seconds[-1]:.0f} s")
        return self._encode(merge(self.base, factors, DEFAULT_RECIPE.scaling, "tuned"))


def score(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy and each route's recall."""
    t, p = np.array(truth), np.array(predicted)
    out = {"accuracy": float(np.mean(t == p))}
    out.update({f"recall {r}": float(np.mean(p[t == r] == r)) for r in sorted(set(truth))})
    return out


SLICES = ("all", "zh", "en", "caregiving", "general", "zh caregiving", "zh general", "en caregiving", "en general")


def _in_slice(row: dict[str, str], key: str) -> bool:
    """`all`, a language, a route, or `LANG ROUTE`."""
    return key == "all" or all(part in (row["lang"], row["label"]) for part in key.split())


def held_out_slices(rows: Sequence[dict[str, str]], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy overall, per language, per route and per language x route."""
    out = {}
    for key in SLICES:
        hits = [p == r["label"] for r, p in zip(rows, predicted, strict=True) if _in_slice(r, key)]
        out[key] = float(np.mean(hits)) if hits else float("nan")
    return out


def run(log: Callable[[str], None]) -> dict[str, Any]:
    from adapters.wiring import routing_files

    examples = load_labelled(routing_files(Settings()))
    labels = [e.label for e in examples]
    held_out = {
        name: [json.loads(line) for line in (HELDOUT_DIR / name).read_text("utf-8").splitlines() if line.strip()]
        for name in ("real-users-validation.jsonl", "validation.jsonl")
    }
    for rows in held_out.values():
        for row in rows:
            row.setdefault("lang", "zh" if any("\u4e00" <= c <= "\u9fff" for c in row["text"]) else "en")
    vectors = Vectors([e.text for e in examples] + [r["text"] for rows in held_out.values() for r in rows], log)

    splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
        "cv5": [(np.setdiff1d(np.arange(len(examples)), held), held) for held in _folds(labels)],
        "lofo": [
            (
                np.array([i for i, e in enumerate(examples) if not e.source.startswith(HELD_OUT_FILE)]),
                np.array([i for i, e in enumerate(examples) if e.source.startswith(HELD_OUT_FILE)]),
            )
        ],
    }
    predictions: dict[str, dict[str, list[str]]] = {c.name: {} for c in CANDIDATES}
    for tuned in (False, True):
        for split, parts in splits.items():
            truth_order: list[int] = []
            preds: dict[str, list[str]] = {c.name: [] for c in CANDIDATES if c.tuned == tuned}
            for train, test in parts:
                part = [examples[i] for i in train]
                space = vectors.tuned_on(part) if tuned else vectors.base_vectors
                heads = fit_heads(vectors.lookup(space, [e.text for e in part]), part)
                test_x = vectors.lookup(space, [examples[i].text for i in test])
                for c in CANDIDATES:
                    if c.tuned == tuned:
                        preds[c.name] += heads[(c.head, c.thresholds)](test_x)
                truth_order += list(test)
            for name, routes in preds.items():
                predictions[name][split] = [""] * len(examples)
                for i, route in zip(truth_order, routes, strict=True):
                    predictions[name][split][i] = route
        space = vectors.tuned_on(examples) if tuned else vectors.base_vectors
        heads = fit_heads(vectors.lookup(space, [e.text for e in examples]), examples)
        for c in CANDIDATES:
            if c.tuned == tuned:
                for name, rows in held_out.items():
                    predictions[c.name][name] = heads[(c.head, c.thresholds)](
                        vectors.lookup(space, [r["text"] for r in rows])
                    )
    results: dict[str, Any] = {"examples": len(examples), "tuning_seconds": vectors.tuning_seconds, "candidates": {}}
    lofo = [i for i, e in enumerate(examples) if e.source.startswith(HELD_OUT_FILE)]
    for c in CANDIDATES:
        p = predictions[c.name]
        results["candidates"][c.name] = {
            "cv5": score(labels, p["cv5"]),
            "lofo": score([labels[i] for i in lofo], [p["lofo"][i] for i in lofo]),
            **{name: held_out_slices(rows, p[name]) for name, rows in held_out.items()},
        }
    return results


def markdown(results: dict[str, Any]) -> str:
    """The README table: CV columns (training data), then the held-out ones."""
    head = (
        "| candidate | CV 5-fold | CV held-out file | real-users-validation: all | zh | en | caregiving | general "
        "| zh caregiving | zh general | en caregiving | en general | validation.jsonl (tuned on) |"
    )
    lines = [head, "|" + " --- |" * 13]
    for name, r in results["candidates"].items():
        v = r["real-users-validation.jsonl"]
        cells = [r["cv5"]["accuracy"], r["lofo"]["accuracy"]] + [v[k] for k in SLICES]
        cells.append(r["validation.jsonl"]["all"])
        lines.append(f"| {name} | " + " | ".join(f"{x:.1%}" for x in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the full results here")
    args = parser.parse_args(argv)
    results = run(lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
