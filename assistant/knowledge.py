"""Retrieval from the care knowledge base with the router's own encoder (already loaded, no second model)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from assistant.config import cache_dir
from assistant.encoders import Encoder
from data.knowledge import KnowledgeEntry


@dataclass(frozen=True)
class Passage:
    """A retrieved entry, how close it is to the question, and the language it is quoted in."""

    entry: KnowledgeEntry
    score: float
    lang: str

    @property
    def title(self) -> str:
        return self.entry.title_in(self.lang)

    @property
    def text(self) -> str:
        return self.entry.text_in(self.lang)

    def as_json(self) -> dict[str, object]:
        return {"id": self.entry.id, "title": self.title, "source": self.entry.source, "score": round(self.score, 4)}


class KnowledgeIndex:
    """Entry vectors (title + text, per language), computed once per encoder and entry set, then cached."""

    def __init__(self, encoder: Encoder, entries: Sequence[KnowledgeEntry], min_score: float, top_k: int = 2) -> None:
        self.entries = list(entries)
        self.min_score = min_score
        self.top_k = top_k
        self._encoder = encoder
        self._owner: list[int] = []  # row -> entry index
        texts: list[str] = []
        for i, entry in enumerate(self.entries):
            for lang in ("zh", "en"):
                body = entry.text_zh if lang == "zh" else entry.text_en
                if body:
                    texts.append(f"{entry.title_in(lang)}\n{body}")
                    self._owner.append(i)
        self._vectors = self._load_or_encode(texts)

    def _load_or_encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        key = hashlib.sha256(json.dumps([self._encoder.name, texts], ensure_ascii=False).encode()).hexdigest()[:24]
        path = cache_dir() / "knowledge" / f"{key}.npy"
        if path.is_file():
            try:
                vectors = np.load(path, allow_pickle=False)
                if vectors.shape[0] == len(texts):
                    return vectors
            except (OSError, ValueError):
                pass  # a torn cache file: encode again and replace it
        vectors = np.asarray(self._encoder.encode(texts), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors, allow_pickle=False)
        tmp.replace(path)
        return vectors

    def search(self, question: str, lang: str, vector: np.ndarray | None = None) -> list[Passage]:
        """The best entries for the question (at most top_k, each at or above min_score), best first."""
        if not self.entries:
            return []
        query = vector if vector is not None else self._encoder.encode([question])[0]
        scores = self._vectors @ np.asarray(query, dtype=np.float32)
        best: dict[int, float] = {}
        for row in np.argsort(-scores):
            owner = self._owner[int(row)]
            if owner not in best:
                best[owner] = float(scores[row])
            if len(best) >= self.top_k:
                break
        return [Passage(self.entries[i], s, lang) for i, s in best.items() if s >= self.min_score]
