"""Plain HTTP to an OpenAI-compatible server (stdlib only): its address, JSON calls and errors a user can act on."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from assistant.errors import GenerationFailed, UsageError

#: What to do when the server is not there: our own server is started by this command.
START_HINT = "start it with `python main.py vllm start`, or point engine_url / --engine-url at a running server"


class ServerUnreachable(GenerationFailed):
    """Nothing answers at the server's address (refused, unknown host, or silent past the timeout)."""


class ServerRefused(GenerationFailed):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, hint: str, status: int) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class ServerAddress:
    """Where an OpenAI-compatible server listens; `prefix` is any path before /v1 (a load balancer's route)."""

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection; nothing is sent until the first request."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)


def parse_server_url(url: str) -> ServerAddress:
    """`http://127.0.0.1:8011` (a trailing `/v1` is allowed) as a ServerAddress, or a UsageError naming the value."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"engine_url {url!r} is not an http(s) URL", "write it like http://127.0.0.1:8011 (the server's base URL)"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"engine_url {url!r} has a bad port", "write it like http://127.0.0.1:8011") from None
    prefix = parts.path.rstrip("/").removesuffix("/v1")
    return ServerAddress(parts.scheme, parts.hostname, port, prefix)


def headers(api_key: str | None, body: bool = False) -> dict[str, str]:
    """Request headers: JSON in and out, and the bearer key when one is set."""
    found = {"Accept": "application/json"}
    if body:
        found["Content-Type"] = "application/json"
    if api_key:
        found["Authorization"] = f"Bearer {api_key}"
    return found


def unreachable(address: ServerAddress, exc: BaseException, timeout: float) -> ServerUnreachable:
    """The error for a failed connection or read: says which server, why, and what to do."""
    if isinstance(exc, TimeoutError):
        return ServerUnreachable(
            f"vLLM server at {address.url} sent nothing for {timeout:g} s",
            "it may be overloaded or stuck: see `python main.py vllm status` and the log it names",
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return ServerUnreachable(f"vLLM server at {address.url} is not reachable ({reason})", START_HINT)


def server_error(address: ServerAddress, status: int, raw: bytes, model: str | None = None) -> ServerRefused:
    """The error for an HTTP error status, with the server's own message and a hint for the usual causes."""
    detail = _error_text(raw)
    if status in (401, 403):
        hint = "set engine_api_key in the settings file or the YIJIA_ENGINE_API_KEY environment variable"
    elif status == 404 and model:
        hint = f"the server does not serve {model!r}: load it with `python main.py vllm load {model}` or restart it"
    elif status == 400:
        hint = "the server refused the request: try a shorter question or a smaller --max-new-tokens"
    else:
        hint = "see the server's log (`python main.py vllm status` names it)"
    return ServerRefused(f"vLLM server at {address.url} answered HTTP {status}: {detail}", hint, status)


def _error_text(raw: bytes) -> str:
    """The message inside an OpenAI-style error body ({"error": {"message"}}, {"message"}, {"detail"}), or the text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return text[:300]


def request_json(
    address: ServerAddress,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> Any:
    """One JSON request; the parsed JSON answer (None for an empty or non-JSON 2xx body)."""
    conn = address.connect(timeout)
    try:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        conn.request(method, address.prefix + path, body=data, headers=headers(api_key, body is not None))
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise unreachable(address, exc, timeout) from None
    finally:
        conn.close()
    if response.status >= 400:
        raise server_error(address, response.status, raw, (body or {}).get("lora_name") or (body or {}).get("model"))
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def served_models(address: ServerAddress, api_key: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The entries of GET /v1/models (each has at least an `id`)."""
    answer = request_json(address, "GET", "/v1/models", api_key=api_key, timeout=timeout)
    entries = answer.get("data") if isinstance(answer, dict) else None
    return [e for e in entries or [] if isinstance(e, dict) and isinstance(e.get("id"), str)]
