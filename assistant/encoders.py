"""The Encoder protocol (text -> unit vectors) and its sentence-transformers implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from assistant.errors import ModelUnavailable


class Encoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim)."""
        ...


class SentenceTransformerEncoder:
    """Any sentence-transformers model id or folder; E5 models get their `query: ` prompt."""

    def __init__(self, model_path: str, name: str | None = None, device: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer  # lazy: keeps the core torch-free
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ModelUnavailable("sentence-transformers is not installed", "run the README's setup command") from exc
        try:
            self._model: Any = SentenceTransformer(model_path, device=device or "cpu", local_files_only=True)
        except Exception as exc:
            raise ModelUnavailable(
                f"could not load the sentence encoder {model_path!r}: {exc}",
                "pass a local sentence-transformers folder, or use the bundled encoder",
            ) from exc
        self.name = name or str(model_path)
        prompts = getattr(self._model, "prompts", {}) or {}
        self._prompt_name = "query" if "query" in prompts else None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts),
            prompt_name=self._prompt_name,
            normalize_embeddings=True,
            convert_to_numpy=True,
            batch_size=64,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
