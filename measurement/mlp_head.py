"""A one-hidden-layer MLP on sentence embeddings (numpy only), the 'wider head' routing candidate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class MlpHead:
    """Standardised input -> ReLU hidden layer -> softmax, class-balanced, L2, full-batch Adam."""

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
        hidden: int = 256,
        l2: float = 1e-3,
        epochs: int = 300,
        lr: float = 3e-3,
        seed: int = 0,
    ) -> MlpHead:
        """Hyper-parameters chosen by cross-validation on the routing data (hidden 256, L2 1e-3)."""
        classes = tuple(sorted(set(labels)))
        y = np.array([classes.index(label) for label in labels])
        rng = np.random.default_rng(seed)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        xs = ((x - mean) / scale).astype(np.float32)
        n, dim = xs.shape
        k = len(classes)
        onehot = np.eye(k, dtype=np.float32)[y]
        weight = (n / (k * np.bincount(y, minlength=k)))[y][:, None].astype(np.float32)
        params = {
            "w1": rng.normal(0, np.sqrt(2 / dim), (dim, hidden)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "w2": rng.normal(0, np.sqrt(1 / hidden), (hidden, k)).astype(np.float32),
            "b2": np.zeros(k, np.float32),
        }
        first = {name: np.zeros_like(p) for name, p in params.items()}
        second = {name: np.zeros_like(p) for name, p in params.items()}
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
        return cls(classes, mean, scale, params["w1"], params["b1"], params["w2"], params["b2"])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(((x - self.mean) / self.scale) @ self.w1 + self.b1, 0)
        return _softmax(h @ self.w2 + self.b2)

    def predict(self, x: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(x).argmax(axis=1)]
