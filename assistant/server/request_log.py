"""One stderr line per request (never the question unless asked); an unexpected error becomes a 500, not a traceback."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assistant.server.api_errors import SERVER_ERROR, ApiError

#: Logged when the client closed the connection before its answer was sent (nginx's convention).
CLIENT_CLOSED = 499
#: Probes polled every few seconds by supervisors: logging each would bury the requests that matter.
UNLOGGED_PATHS = ("/health",)


@dataclass
class RequestRecord:
    """What one request did, filled in by its handler and logged when it ends."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    method: str = ""
    path: str = ""
    status: int = 0
    route: str | None = None
    adapter: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_ms: float | None = None
    question: str | None = None
    notes: list[str] = field(default_factory=list)

    def line(self, latency_ms: float, with_question: bool) -> str:
        parts = [f"[serve] {self.id} {self.method} {self.path} {self.status}"]
        if self.route is not None:
            parts.append(f"route={self.route} adapter={self.adapter or 'base'}")
        if self.completion_tokens is not None:
            parts.append(f"tokens={self.prompt_tokens or 0}+{self.completion_tokens}")
        if self.queue_ms is not None:
            parts.append(f"queue={self.queue_ms:.0f}ms")
        parts.append(f"latency={latency_ms:.0f}ms")
        parts += self.notes
        if with_question and self.question is not None:
            parts.append(f"question={self.question!r}")
        return " ".join(parts)


def record_of(scope: Scope) -> RequestRecord:
    """The record of the request this scope belongs to (a throw-away one outside RequestLog)."""
    record = scope.setdefault("state", {}).get("record")
    return record if isinstance(record, RequestRecord) else RequestRecord()


class RequestLog:
    """ASGI middleware: gives each HTTP request a record and an x-request-id, and logs it when it ends."""

    def __init__(self, app: ASGIApp, log: Callable[[str], None], log_questions: bool) -> None:
        self.app = app
        self.log = log
        self.log_questions = log_questions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(method=scope["method"], path=scope["path"])
        scope.setdefault("state", {})["record"] = record
        started = time.perf_counter()
        sent_start = False

        async def tagged(message: Message) -> None:
            nonlocal sent_start
            if message["type"] == "http.response.start":
                sent_start = True
                if not record.status:
                    record.status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", record.id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception as exc:  # noqa: BLE001 - a bug in one request must not take the server or leak a traceback
            record.status = 500
            record.notes.append(f"error={type(exc).__name__}: {exc}")
            if not sent_start:
                error = ApiError(500, "internal error while handling the request", "internal_error", kind=SERVER_ERROR)
                await error.response()(scope, receive, tagged)
        finally:
            if record.path not in UNLOGGED_PATHS or (record.status >= 500 and record.status != 503):
                self.log(record.line((time.perf_counter() - started) * 1000.0, self.log_questions))


def header_value(text: Any) -> str:
    """A header-safe rendering (headers are Latin-1): non-ASCII characters are percent-encoded."""
    value = str(text)
    return value if value.isascii() and value.isprintable() else quote(value, safe=" !#$&'()*+,/:;=?@[]~")
