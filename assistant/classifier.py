"""A softmax classifier on sentence embeddings, fitted with numpy and stored without pickle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
        classes = tuple(sorted(set(labels)))
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[label] for label in labels])
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6  # E5 cosines sit in a narrow band: standardising spreads them out
        xs = (x - mean) / scale
        n, dim = xs.shape
        k = len(classes)
        onehot = np.eye(k)[y]
        counts = np.bincount(y, minlength=k).astype(np.float64)
        sample_w = (n / (k * counts))[y][:, None]  # balanced: each route counts as much as the others
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


@dataclass
class StoredRouter:
    """Everything a router needs at run time, saved as one .npz (no pickle) plus one JSON file."""

    classifier: SoftmaxClassifier
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
        np.savez(
            folder / "router.npz",
            weights=c.weights,
            bias=c.bias,
            mean=c.mean,
            scale=c.scale,
            example_vectors=self.example_vectors.astype(np.float16),
        )
        meta = {
            "format": FORMAT_VERSION,
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
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"router format {meta.get('format')} is not {FORMAT_VERSION}")
        with np.load(folder / "router.npz", allow_pickle=False) as arrays:
            classifier = SoftmaxClassifier(
                tuple(meta["classes"]), arrays["weights"], arrays["bias"], arrays["mean"], arrays["scale"]
            )
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
