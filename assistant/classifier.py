"""Classifiers on sentence embeddings (a linear softmax and a one-hidden-layer MLP), fitted with numpy and
stored without pickle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1 had no `head` key: always linear


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _standardised_balanced(
    x: np.ndarray, labels: Sequence[str]
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What both heads fit on: the routes (sorted), each example's route index, the standardising mean
    and scale, the standardised inputs, and class-balanced weights, shape (n, 1)."""
    classes = tuple(sorted(set(labels)))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels])
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6  # E5 cosines sit in a narrow band: standardising spreads them out
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    weights = (len(y) / (len(classes) * counts))[y][:, None]  # balanced: each route counts as much as the others
    return classes, y, mean, scale, (x - mean) / scale, weights


@dataclass
class SoftmaxClassifier:
    """Multinomial logistic regression with L2 and class-balanced weights on standardised inputs."""

    classes: tuple[str, ...]
    weights: np.ndarray  # (dim, n_classes)
    bias: np.ndarray  # (n_classes,)
    mean: np.ndarray  # (dim,)
    scale: np.ndarray  # (dim,)

    @classmethod
    def fit(
        cls, x: np.ndarray, labels: Sequence[str], l2: float = 1e-2, steps: int = 400, lr: float = 0.5
    ) -> SoftmaxClassifier:
        """Full-batch gradient descent with momentum; E5 vectors are small, so this takes well under a second."""
        classes, y, mean, scale, xs, sample_w = _standardised_balanced(x, labels)
        n, dim = xs.shape
        k = len(classes)
        onehot = np.eye(k)[y]
        w = np.zeros((dim, k))
        b = np.zeros(k)
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        for _ in range(steps):
            p = _softmax(xs @ w + b)
            g = (p - onehot) * sample_w / n
            gw = xs.T @ g + l2 * w
            gb = g.sum(axis=0)
            vw = 0.9 * vw - lr * gw
            vb = 0.9 * vb - lr * gb
            w += vw
            b += vb
        return cls(
            classes, w.astype(np.float32), b.astype(np.float32), mean.astype(np.float32), scale.astype(np.float32)
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in `classes` order."""
        return _softmax(((x - self.mean) / self.scale) @ self.weights + self.bias)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters by name, as `from_arrays` reads them back."""
        return {"weights": self.weights, "bias": self.bias, "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_arrays(cls, classes: tuple[str, ...], arrays: Any) -> SoftmaxClassifier:
        return cls(classes, arrays["weights"], arrays["bias"], arrays["mean"], arrays["scale"])


#: The MLP's hidden width and L2, chosen by cross-validation on the routing data when the MLP was a
#: measurement-only candidate (`measurement/routing_candidates.py`).
MLP_HIDDEN = 256
MLP_L2 = 1e-3


@dataclass
class MlpClassifier:
    """Standardised input -> ReLU hidden layer -> softmax; class-balanced, L2, full-batch Adam.

    The "wider head": it can bend the boundary between routes where a linear head on the same
    vectors cannot (a drug question vs a drug headline), at a cost per query of one small matmul.
    """

    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        labels: Sequence[str],
        hidden: int = MLP_HIDDEN,
        l2: float = MLP_L2,
        epochs: int = 300,
        lr: float = 3e-3,
        seed: int = 0,
    ) -> MlpClassifier:
        """Deterministic for a given seed and data (numpy on CPU, full batch)."""
        classes, y, mean, scale, standardised, balanced = _standardised_balanced(x, labels)
        rng = np.random.default_rng(seed)
        xs = standardised.astype(np.float32)
        weight = balanced.astype(np.float32)
        n, dim = xs.shape
        k = len(classes)
        onehot = np.eye(k, dtype=np.float32)[y]
        params = {
            "w1": rng.normal(0, np.sqrt(2 / dim), (dim, hidden)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "w2": rng.normal(0, np.sqrt(1 / hidden), (hidden, k)).astype(np.float32),
            "b2": np.zeros(k, np.float32),
        }
        first = {name: np.zeros_like(v) for name, v in params.items()}
        second = {name: np.zeros_like(v) for name, v in params.items()}
        for step in range(1, epochs + 1):
            pre = xs @ params["w1"] + params["b1"]
            h = np.maximum(pre, 0)
            g = (_softmax(h @ params["w2"] + params["b2"]) - onehot) * weight / n
            gh = (g @ params["w2"].T) * (pre > 0)
            grads = {
                "w2": h.T @ g + l2 * params["w2"],
                "b2": g.sum(axis=0),
                "w1": xs.T @ gh + l2 * params["w1"],
                "b1": gh.sum(axis=0),
            }
            for name, grad in grads.items():
                first[name] = 0.9 * first[name] + 0.1 * grad
                second[name] = 0.999 * second[name] + 0.001 * grad**2
                update = (first[name] / (1 - 0.9**step)) / (np.sqrt(second[name] / (1 - 0.999**step)) + 1e-8)
                params[name] -= lr * update
        return cls(
            classes,
            mean.astype(np.float32),
            scale.astype(np.float32),
            params["w1"],
            params["b1"],
            params["w2"],
            params["b2"],
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in `classes` order."""
        h = np.maximum(((x - self.mean) / self.scale) @ self.w1 + self.b1, 0)
        return _softmax(h @ self.w2 + self.b2)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters by name, as `from_arrays` reads them back."""
        return {"mean": self.mean, "scale": self.scale, "w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}

    @classmethod
    def from_arrays(cls, classes: tuple[str, ...], arrays: Any) -> MlpClassifier:
        return cls(classes, arrays["mean"], arrays["scale"], arrays["w1"], arrays["b1"], arrays["w2"], arrays["b2"])


Classifier = SoftmaxClassifier | MlpClassifier
#: Heads by the name stored with them (and accepted by `router_fit.fit_router`).
HEADS: dict[str, type[SoftmaxClassifier] | type[MlpClassifier]] = {"linear": SoftmaxClassifier, "mlp": MlpClassifier}


def head_name(classifier: Classifier) -> str:
    """The name `HEADS` files this classifier's type under."""
    return next(name for name, kind in HEADS.items() if isinstance(classifier, kind))


@dataclass
class StoredRouter:
    """Everything a router needs at run time, saved as one .npz (no pickle) plus one JSON file."""

    classifier: Classifier
    min_confidence: float
    min_margin: float
    encoder_name: str
    fingerprint: str
    example_texts: list[str]
    example_labels: list[str]
    example_vectors: np.ndarray  # (n, dim) float16 unit vectors, for nearest-example lookups
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write `router.npz` and `router.json` into `folder` (which the caller makes atomic)."""
        folder.mkdir(parents=True, exist_ok=True)
        c = self.classifier
        arrays: dict[str, Any] = {**c.arrays(), "example_vectors": self.example_vectors.astype(np.float16)}
        np.savez(folder / "router.npz", **arrays)
        meta = {
            "format": FORMAT_VERSION,
            "head": head_name(c),
            "classes": list(c.classes),
            "min_confidence": self.min_confidence,
            "min_margin": self.min_margin,
            "encoder": self.encoder_name,
            "fingerprint": self.fingerprint,
            "examples": [[t, label] for t, label in zip(self.example_texts, self.example_labels, strict=True)],
            "metrics": self.metrics,
        }
        (folder / "router.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> StoredRouter:
        """Read a router saved by `save`; raises ValueError/OSError when missing or damaged."""
        meta = json.loads((folder / "router.json").read_text(encoding="utf-8"))
        if meta.get("format") not in READABLE_FORMATS:
            raise ValueError(f"router format {meta.get('format')} is not one of {READABLE_FORMATS}")
        head = meta.get("head", "linear")
        if head not in HEADS:
            raise ValueError(f"router head {head!r} is not one of {sorted(HEADS)}")
        with np.load(folder / "router.npz", allow_pickle=False) as arrays:
            classifier = HEADS[head].from_arrays(tuple(meta["classes"]), arrays)
            vectors = arrays["example_vectors"]
        texts = [t for t, _ in meta["examples"]]
        labels = [label for _, label in meta["examples"]]
        if len(texts) != len(vectors):
            raise ValueError("router examples and vectors disagree")
        return cls(
            classifier,
            float(meta["min_confidence"]),
            float(meta["min_margin"]),
            meta["encoder"],
            meta["fingerprint"],
            texts,
            labels,
            vectors,
            meta.get("metrics", {}),
        )
