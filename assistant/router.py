"""Router: route(text) -> RouteChoice, from a classifier on sentence embeddings with abstention."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from assistant.classifier import StoredRouter
from assistant.encoders import Encoder

if TYPE_CHECKING:  # about_assistant fits through router_fit, which imports this module
    from assistant.about_assistant import AboutAssistant

GENERAL = "general"


@dataclass(frozen=True)
class Candidate:
    """One route and the classifier's probability for it."""

    route: str
    score: float


@dataclass(frozen=True)
class Neighbour:
    """A training example close to the query, for `/why`."""

    text: str
    route: str
    similarity: float


@dataclass(frozen=True)
class RouteChoice:
    """Where a query goes and why; `adapter=None` means the plain base model answers."""

    route: str
    adapter: str | None
    confidence: float
    margin: float
    candidates: tuple[Candidate, ...]
    nearest: tuple[Neighbour, ...] = ()
    abstained: bool = False  # the top route was not sure enough, so `general` took it
    predicted: str = ""  # the classifier's top route before abstention
    about_assistant: bool = False  # a question about the assistant itself (who are you, who made you)

    def as_json(self) -> dict[str, object]:
        """The `route --json` object (without the query)."""
        return {
            "route": self.route,
            "adapter": self.adapter,
            "confidence": round(self.confidence, 4),
            "margin": round(self.margin, 4),
            "abstained": self.abstained,
            "about_assistant": self.about_assistant,
            "candidates": [{"route": c.route, "score": round(c.score, 4)} for c in self.candidates],
            "nearest": [{"text": n.text, "route": n.route, "similarity": round(n.similarity, 4)} for n in self.nearest],
        }


def decide(
    probabilities: np.ndarray, classes: Sequence[str], min_confidence: float, min_margin: float
) -> tuple[str, str, bool]:
    """(chosen route, top route, abstained): a non-general top route must clear both thresholds."""
    order = np.argsort(-probabilities)
    top = classes[int(order[0])]
    confidence = float(probabilities[order[0]])
    margin = confidence - float(probabilities[order[1]]) if len(order) > 1 else confidence
    if top != GENERAL and GENERAL in classes and (confidence < min_confidence or margin < min_margin):
        return GENERAL, top, True
    return top, top, False


class Router:
    """Routes text with a fitted classifier; routes map to adapter names (general -> None)."""

    def __init__(
        self,
        encoder: Encoder,
        stored: StoredRouter,
        routes: Mapping[str, str | None],
        nearest_k: int = 3,
        about: AboutAssistant | None = None,
        search_encoder: Encoder | None = None,
    ) -> None:
        self.encoder = encoder
        #: For similarity search (knowledge passages): `encoder` may be tuned to separate routes, which
        #: blurs which texts mean the same; this one is not (it is `encoder` when none is given).
        self.search_encoder = search_encoder or encoder
        self.stored = stored
        self.about = about  # flags questions about the assistant, on the same embedding
        self.routes = dict(routes)
        self.nearest_k = nearest_k
        # Stored as float16 to keep the file small; converted once here, not on every query.
        self._example_vectors = stored.example_vectors.astype(np.float32)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.stored.classifier.classes

    def adapter_for(self, route: str) -> str | None:
        """The adapter serving `route`; routes not in the table are served by an adapter of the same name."""
        if route == GENERAL:
            return None
        return self.routes.get(route, route)

    def route(self, text: str) -> RouteChoice:
        """Route one query."""
        return self.route_many([text])[0]

    def route_many(self, texts: Sequence[str]) -> list[RouteChoice]:
        """Route a batch (one encoder call)."""
        if not texts:
            return []
        vectors = self.encoder.encode(texts)
        probs = self.stored.classifier.predict_proba(vectors)
        sims = vectors @ self._example_vectors.T if self.nearest_k else None
        choices = [self._choice(probs[i], None if sims is None else sims[i]) for i in range(len(texts))]
        if self.about is not None:
            flags = self.about.flags(vectors)
            choices = [replace(c, about_assistant=f) if f else c for c, f in zip(choices, flags, strict=True)]
        return choices

    def _choice(self, probs: np.ndarray, sims: np.ndarray | None) -> RouteChoice:
        classes = self.classes
        route, top, abstained = decide(probs, classes, self.stored.min_confidence, self.stored.min_margin)
        order = np.argsort(-probs)
        candidates = tuple(Candidate(classes[int(i)], float(probs[i])) for i in order)
        confidence = float(probs[classes.index(route)])
        others = [float(probs[i]) for i, c in enumerate(classes) if c != route]
        margin = confidence - max(others) if others else confidence
        nearest: tuple[Neighbour, ...] = ()
        if sims is not None and len(sims):
            best = np.argsort(-sims)[: self.nearest_k]
            nearest = tuple(
                Neighbour(self.stored.example_texts[int(i)], self.stored.example_labels[int(i)], float(sims[i]))
                for i in best
            )
        return RouteChoice(route, self.adapter_for(route), confidence, margin, candidates, nearest, abstained, top)

    def timed_route(self, text: str) -> tuple[RouteChoice, float]:
        """Route and return the latency in milliseconds (for eval and bench)."""
        start = time.perf_counter()
        choice = self.route(text)
        return choice, (time.perf_counter() - start) * 1000.0
