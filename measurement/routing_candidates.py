"""Routing candidates side by side: heads on the published encoder and on one tuned for routing, scored by
cross-validation on the training data and then once on the held-out sets.

Run: `python -m measurement.routing_candidates [--splits lofo] [--encoders tuned] [--json FILE]`. Each tuned
split tunes the encoder once (a few minutes on two busy cores, then cached like the product's), so `cv5`
costs five tunings. Choices are made on the cross-validation columns (`cv5`: stratified 5-fold; `lofo`: the
training file most like real users held out whole); the held-out columns are printed for the record, never
to choose. The one figure taken from a split is the caregiving prior shift, chosen on the `lofo` fold and
then applied unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from assistant.encoders import Encoder
from assistant.router import GENERAL
from assistant.router_fit import balanced_accuracy, fit_router, stratified_folds
from data.labels import HELDOUT_DIR, Example, load_labelled

LOFO_FILE = "written-real-users.jsonl"  # the training file most like real users: held out whole in `lofo`
SHIFT_GRID = tuple(np.round(np.arange(-1.0, 2.01, 0.25), 2))  # log-odds added to every non-general route


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
    head: str  # "linear" (L2 by CV) or "mlp", each fitted by the product's `fit_router`
    rule: str  # "thresholds" (abstention fitted by CV), "argmax", or "shift" (caregiving prior from `lofo`)


CANDIDATES = (
    Candidate("linear head + thresholds", False, "linear", "thresholds"),
    Candidate("MLP head", False, "mlp", "argmax"),
    Candidate("tuned encoder + linear head + thresholds (product)", True, "linear", "thresholds"),
    Candidate("tuned encoder + linear head, no thresholds", True, "linear", "argmax"),
    Candidate("tuned encoder + linear head, prior shift from lofo", True, "linear", "shift"),
    Candidate("tuned encoder + MLP head", True, "mlp", "argmax"),
    Candidate("tuned encoder + MLP head + thresholds", True, "mlp", "thresholds"),
)


@dataclass(frozen=True)
class Scores:
    """A head's probabilities on some texts, and the routes its abstention thresholds pick."""

    classes: tuple[str, ...]
    probs: np.ndarray
    thresholded: list[str]

    def routes(self, rule: str, shift: float = 0.0) -> list[str]:
        if rule == "thresholds":
            return self.thresholded
        bonus = np.array([0.0 if c == GENERAL else shift for c in self.classes]) if rule == "shift" else 0.0
        return [self.classes[i] for i in (np.log(self.probs + 1e-12) + bonus).argmax(axis=1)]


Head = Callable[[np.ndarray], Scores]


def fit_heads(x: np.ndarray, examples: Sequence[Example]) -> dict[str, Head]:
    """The product's two heads, each fitted as the product fits it (with its CV thresholds), on (x, examples)."""
    from assistant.router import decide

    table = _Table("candidates", [e.text for e in examples], x)

    def head_of(name: str) -> Head:
        stored = fit_router(table, examples, head=name).stored
        clf = stored.classifier

        def scores(v: np.ndarray) -> Scores:
            p = clf.predict_proba(v)
            picked = [decide(r, clf.classes, stored.min_confidence, stored.min_margin)[0] for r in p]
            return Scores(clf.classes, p, picked)

        return scores

    return {"linear": head_of("linear"), "mlp": head_of("mlp")}


class Vectors:
    """Vectors of every text under the base encoder, and under copies of it tuned on given training parts."""

    def __init__(
        self,
        texts: Sequence[str],
        base: Encoder,
        log: Callable[[str], None],
        tune: Callable[[Sequence[Example]], Encoder] | None = None,
    ) -> None:
        self.texts = list(dict.fromkeys(texts))
        self.log = log
        self.base = base
        self.tune = tune
        self._base_vectors: np.ndarray | None = None
        self.tuning_seconds: list[float] = []

    @property
    def base_vectors(self) -> np.ndarray:
        """Computed on first use: tuned candidates alone never need them."""
        if self._base_vectors is None:
            self._base_vectors = self.encode(self.base)
        return self._base_vectors

    def encode(self, encoder: Encoder) -> np.ndarray:
        return np.concatenate([encoder.encode(self.texts[i : i + 64]) for i in range(0, len(self.texts), 64)])

    def lookup(self, vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        rows = {t: i for i, t in enumerate(self.texts)}
        return vectors[[rows[t] for t in texts]]

    def tuned_on(self, examples: Sequence[Example]) -> np.ndarray:
        if self.tune is None:
            raise ValueError("no tuning given: only untuned candidates can run")
        started = time.perf_counter()
        encoder = self.tune(examples)
        self.tuning_seconds.append(time.perf_counter() - started)
        self.log(f"tuned on {len(examples)} examples in {self.tuning_seconds[-1]:.0f} s")
        return self.encode(encoder)


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


def splits_of(examples: Sequence[Example], names: Sequence[str]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(train, test) index pairs: `cv5` stratified folds, `lofo` the real-user-like file held out whole."""
    labels = [e.label for e in examples]
    everything = np.arange(len(examples))
    lofo = np.array([i for i, e in enumerate(examples) if e.source.startswith(LOFO_FILE)], dtype=int)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    if "cv5" in names:
        out["cv5"] = [(np.setdiff1d(everything, held), held) for held in stratified_folds(labels, 5)]
    if "lofo" in names and len(lofo):
        out["lofo"] = [(np.setdiff1d(everything, lofo), lofo)]
    return out


def best_shift(truth: Sequence[str], scores: Scores) -> float:
    """The caregiving prior shift with the best balanced accuracy (ties: the one nearest zero)."""
    ranked = sorted(SHIFT_GRID, key=lambda s: (-balanced_accuracy(truth, scores.routes("shift", s)), abs(s)))
    return float(ranked[0])


def run(
    examples: Sequence[Example],
    held_out: dict[str, list[dict[str, str]]],
    vectors: Vectors,
    splits: Sequence[str] = ("cv5", "lofo"),
    candidates: Sequence[Candidate] = CANDIDATES,
) -> dict[str, Any]:
    """Every candidate's routes on each split's test parts and on each held-out set, scored."""
    labels = [e.label for e in examples]
    parts_of = splits_of(examples, splits)
    results: dict[str, Any] = {"examples": len(examples), "candidates": {}}
    for tuned in sorted({c.tuned for c in candidates}):
        chosen = [c for c in candidates if c.tuned == tuned]
        oof: dict[str, dict[str, tuple[list[int], list[Scores]]]] = {}
        for split, parts in parts_of.items():
            for train, test in parts:
                part = [examples[i] for i in train]
                space = vectors.tuned_on(part) if tuned else vectors.base_vectors
                heads = fit_heads(vectors.lookup(space, [e.text for e in part]), part)
                test_x = vectors.lookup(space, [examples[i].text for i in test])
                for head in {c.head for c in chosen}:
                    order, scored = oof.setdefault(split, {}).setdefault(head, ([], []))
                    order += [int(i) for i in test]
                    scored.append(heads[head](test_x))
        space = vectors.tuned_on(examples) if tuned else vectors.base_vectors
        final = fit_heads(vectors.lookup(space, [e.text for e in examples]), examples)
        for c in chosen:
            row: dict[str, Any] = {}
            shift = 0.0
            if c.rule == "shift" and "lofo" in oof:
                order, scored = oof["lofo"][c.head]
                shift = best_shift([labels[i] for i in order], _joined(scored))
                row["shift"] = shift
            for split, by_head in oof.items():
                order, scored = by_head[c.head]
                row[split] = score([labels[i] for i in order], _joined(scored).routes(c.rule, shift))
            for name, rows in held_out.items():
                routes = final[c.head](vectors.lookup(space, [r["text"] for r in rows])).routes(c.rule, shift)
                row[name] = held_out_slices(rows, routes)
            results["candidates"][c.name] = row
    results["tuning_seconds"] = vectors.tuning_seconds
    return results


def _joined(parts: Sequence[Scores]) -> Scores:
    classes = parts[0].classes
    if any(p.classes != classes for p in parts):
        raise ValueError("folds disagree on the routes")
    return Scores(classes, np.concatenate([p.probs for p in parts]), [r for p in parts for r in p.thresholded])


def markdown(results: dict[str, Any], held_out: str = "real-users-validation.jsonl") -> str:
    """The README table: CV columns (training data), then the held-out set's slices."""
    head = f"| candidate | CV 5-fold | CV lofo | {held_out}: all | zh | en | caregiving | general |"
    lines = [head, "|" + " --- |" * 8]
    for name, r in results["candidates"].items():
        cells = [r.get("cv5", {}).get("accuracy"), r.get("lofo", {}).get("accuracy")]
        cells += [r.get(held_out, {}).get(k) for k in ("all", "zh", "en", "caregiving", "general")]
        lines.append(f"| {name} | " + " | ".join("-" if x is None else f"{x:.1%}" for x in cells) + " |")
    return "\n".join(lines)


def read_held_out(names: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """Held-out rows with a `lang` (given, or zh when the text has CJK characters).

    A name joining files with `+` is one set of their rows together (a set kept in one file per language).
    """
    out = {}
    for name in names:
        rows = [
            json.loads(line)
            for part in name.split("+")
            for line in (HELDOUT_DIR / part).read_text("utf-8").splitlines()
            if line.strip()
        ]
        for row in rows:
            row.setdefault("lang", "zh" if any("\u4e00" <= c <= "\u9fff" for c in row["text"]) else "en")
        out[name] = rows
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from adapters.bundled_encoder import prepare_bundled_encoder
    from adapters.fast_encoder import FastE5Encoder
    from adapters.routing_encoder import DEFAULT_RECIPE, load_or_tune
    from adapters.wiring import routing_files
    from assistant.config import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the full results here")
    parser.add_argument("--splits", default="cv5,lofo", help="comma-separated: cv5, lofo")
    parser.add_argument("--encoders", default="base,tuned", help="comma-separated: base, tuned")
    parser.add_argument("--leave-out", default="", help="comma-separated training files to fit without")
    parser.add_argument(
        "--train-extra", type=Path, action="append", default=[], help="a labelled file to fit on too (a trial batch)"
    )
    parser.add_argument(
        "--held-out",
        default="real-users-validation.jsonl,validation.jsonl",
        help="comma-separated files of data/routing/heldout/ to score once the choice is made",
    )
    parser.add_argument("--layers", type=int, default=DEFAULT_RECIPE.layers, help="tuning recipe: top blocks tuned")
    parser.add_argument("--epochs", type=int, default=DEFAULT_RECIPE.epochs)
    parser.add_argument("--rank", type=int, default=DEFAULT_RECIPE.rank)
    args = parser.parse_args(argv)
    recipe = replace(DEFAULT_RECIPE, layers=args.layers, epochs=args.epochs, rank=args.rank, alpha=2.0 * args.rank)
    kinds = {"base": False, "tuned": True}
    wanted = {kinds[k] for k in args.encoders.split(",")}

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    path = prepare_bundled_encoder()
    # Named as adapters/wiring.py names it, so tunings are shared with the product's cache both ways.
    base = FastE5Encoder(path, name=f"bundled:{path.name}")

    def tune(part: Sequence[Example]) -> Encoder:
        return load_or_tune(base, part, recipe, progress=lambda s: None)

    skipped = tuple(f for f in args.leave_out.split(",") if f)
    files = [*routing_files(Settings()), *args.train_extra]
    examples = [e for e in load_labelled(files) if not (skipped and e.source.startswith(skipped))]
    held_out = read_held_out(tuple(n for n in args.held_out.split(",") if n))
    texts = [e.text for e in examples] + [r["text"] for rows in held_out.values() for r in rows]
    vectors = Vectors(texts, base, log, tune)
    candidates = [c for c in CANDIDATES if c.tuned in wanted]
    results = run(examples, held_out, vectors, args.splits.split(","), candidates)
    results["recipe"] = recipe.as_dict()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    for name in held_out:
        print(markdown(results, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
