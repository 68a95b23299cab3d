"""The models behind the server: loaded once in the background, then shared by a fresh session per request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from assistant.encoders import Encoder
from assistant.router import RouteChoice
from assistant.server.chat_request import AUTO, BASE_NAMES
from assistant.session import BASE, ChatSession

#: (progress) -> the template session whose router, engine and answer policy every request shares.
SessionLoader = Callable[[Callable[[str], None]], ChatSession]

#: Put before a client's system message, so the model reads it as the app's wishes, not a new identity
#: ("The app you are answering through adds these requests; who you are does not change:").
INSTRUCTIONS_HEAD = "接入你的应用补充了以下要求（你的身份不变）："


class SerialEncoder:
    """An encoder that encodes one call at a time.

    The router and the knowledge index share one encoder; a /v1/route request can arrive while
    another request's answer is being prepared. The bundled encoder changes torch's process-wide
    thread count for the length of a call, so two calls at once could leave it wrong for the model.
    """

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.inner.encode(texts)


class Backend:
    """Loads the template session on a thread; says loading/ready/failed; makes one fresh session per request."""

    def __init__(self, load: SessionLoader, log: Callable[[str], None]) -> None:
        self._load = load
        self._log = log
        self._template: ChatSession | None = None
        self.error: BaseException | None = None
        self.progress = "starting"

    @property
    def state(self) -> str:
        if self._template is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    def start(self, on_failure: Callable[[BaseException], None]) -> threading.Thread:
        """Load on a daemon thread; `on_failure(exc)` is called (on that thread) if loading fails."""

        def progress(line: str) -> None:
            self.progress = line.strip() or self.progress
            self._log(line)

        def work() -> None:
            try:
                self._template = self._load(progress)
            except BaseException as exc:  # noqa: BLE001 - reported through on_failure; the server stops
                self.error = exc
                on_failure(exc)

        thread = threading.Thread(target=work, name="serve-load", daemon=True)
        thread.start()
        return thread

    @property
    def template(self) -> ChatSession:
        if self._template is None:
            raise RuntimeError("the models are not loaded yet")
        return self._template

    def adapters(self) -> dict[str, str]:
        """Loaded adapter name -> route."""
        return self.template.installed()

    def models(self) -> list[str]:
        """What a request's `model` may be: auto, base, then every loaded adapter."""
        return [AUTO, BASE, *sorted(self.adapters())]

    def knows(self, model: str) -> bool:
        return model == AUTO or model in BASE_NAMES or model in self.adapters()

    def session(self, model: str, instructions: str = "") -> ChatSession:
        """A fresh session sharing the template's parts, routed by `model`, with the client's instructions."""
        t = self.template
        system = t.system_prompt
        if instructions:
            system = f"{system}\n\n{INSTRUCTIONS_HEAD}\n{instructions}" if system else instructions
        session = ChatSession(
            t.router,
            t.engine,
            t.params,
            system,
            keep_history=True,
            sticky=False,
            answer_prefix=t.answer_prefix,
            policy=t.policy,
        )
        session.set_override(BASE if model in BASE_NAMES else model)
        return session

    def route(self, texts: Sequence[str]) -> list[RouteChoice]:
        """The router's choice for each text (what `route --json` says)."""
        router: Any = self.template.router
        if hasattr(router, "route_many"):
            return list(router.route_many(list(texts)))
        return [router.route(t) for t in texts]

    def health(self) -> dict[str, Any]:
        """What GET /health says: loading (with the latest progress line), ready (with models), or failed."""
        if self.state == "loading":
            return {"status": "loading", "progress": self.progress}
        if self.state == "failed":
            return {"status": "failed", "error": str(self.error)}
        info = self.template.engine.info()
        return {
            "status": "ready",
            "model": info.base_model,
            "quantization": info.quantization,
            "device": info.device,
            "adapters": [{"name": n, "route": r} for n, r in sorted(self.adapters().items())],
            "models": self.models(),
        }
