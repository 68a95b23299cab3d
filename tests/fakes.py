"""Deterministic stand-ins for the encoder and the engine, so core tests need no model."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from assistant.classifier import SoftmaxClassifier, StoredRouter
from assistant.encoders import Encoder
from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from data.labels import Example


class HashingEncoder:
    """Character n-gram hashing into a fixed space: similar texts get similar unit vectors."""

    name = "fake-hashing-encoder"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            lowered = text.lower()
            for n in (1, 2, 3):
                for i in range(max(len(lowered) - n + 1, 1)):
                    gram = lowered[i : i + n]
                    h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "little")
                    out[row, h % self.dim] += 1.0 if h & 1 << 31 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] /= norm if norm else 1.0
        return out


class ScriptedEngine:
    """Yields a deterministic answer naming the adapter, word by word; records every call."""

    def __init__(self, adapters: Sequence[AdapterInfo] = (), fail_with: Exception | None = None) -> None:
        self._adapters = list(adapters)
        self.fail_with = fail_with
        self.calls: list[tuple[list[Message], str | None]] = []
        self.params: list[GenerationParams] = []

    def info(self) -> EngineInfo:
        return EngineInfo("fake-base", "nf4", "cpu", "fake")

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters)

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        self.calls.append((list(messages), adapter))
        self.params.append(params)
        words = f"{params.answer_prefix}answer from {adapter or 'base'} to: {messages[-1].content}".split(" ")
        for i, word in enumerate(words[: params.max_new_tokens]):
            if cancel is not None and cancel.is_set():
                break
            if self.fail_with is not None and i == 2:
                raise self.fail_with
            if stats is not None:
                stats.new_tokens += 1
            yield word if i == 0 else " " + word


def adapter_info(name: str, route: str) -> AdapterInfo:
    return AdapterInfo(name=name, route=route, path=f"/nowhere/{name}")


def stored_classifier(encoder: Encoder, examples: Sequence[Example]) -> StoredRouter:
    """A classifier fitted on `examples` with `encoder`, no thresholds: what a detector or router holds."""
    x = encoder.encode([e.text for e in examples])
    labels = [e.label for e in examples]
    return StoredRouter(
        SoftmaxClassifier.fit(x, labels), 0.0, 0.0, encoder.name, "fp", [e.text for e in examples], labels, x
    )
