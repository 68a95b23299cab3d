"""An Engine over an OpenAI-compatible multi-LoRA server (vLLM): streamed chat completions, one model name per route."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from adapters.openai_http import ServerAddress, parse_server_url, served_models, server_error, unreachable
from adapters.openai_http import headers as request_headers
from adapters.registry import scan_adapters
from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from assistant.errors import GenerationFailed, UsageError

#: How long the installed-and-served adapter list is reused before asking the server again.
ADAPTER_LIST_TTL_S = 10.0


class OpenAIEngine:
    """Engine that sends each answer to a server: the base under `base_name`, an adapter under its own name.

    The router stays in this process; the server only generates. `timeout_s` bounds connecting and
    every wait for the next streamed piece, so a stalled server ends as an error, not a hang.
    """

    def __init__(
        self,
        url: str,
        adapter_dirs: Path | Sequence[Path],
        *,
        api_key: str | None = None,
        base_name: str = "base",
        repetition_penalty: float = 1.0,
        stop: Sequence[str] = (),
        timeout_s: float = 60.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._address = parse_server_url(url)
        self._adapter_dirs = adapter_dirs
        self._api_key = api_key
        self._base_name = base_name
        self._repetition_penalty = repetition_penalty
        self._stop = list(stop)
        self._timeout = timeout_s
        self._warn = warn
        self._listed: tuple[float, list[AdapterInfo]] | None = None
        models = served_models(self._address, api_key, timeout_s)  # fails fast when nothing serves there
        ids = [m["id"] for m in models]
        if base_name not in ids:
            raise GenerationFailed(
                f"vLLM server at {self._address.url} serves no model named {base_name!r} (it serves: {', '.join(ids)})",
                "start the server with `python main.py vllm start`, which names the base 'base'",
            )
        root = next(str(m.get("root") or "") for m in models if m["id"] == base_name)
        self._info = EngineInfo(
            base_model=Path(root).name or base_name,
            quantization="bf16 on the server",
            device=self._address.url,
            kernel="vLLM (OpenAI-compatible API)",
        )

    @property
    def address(self) -> ServerAddress:
        return self._address

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> EngineInfo:
        """Describe the served base model."""
        return self._info

    def adapters(self) -> list[AdapterInfo]:
        """Installed adapters (their manifests give the routes) that the server also serves."""
        now = time.monotonic()
        if self._listed is not None and now - self._listed[0] < ADAPTER_LIST_TTL_S:
            return list(self._listed[1])
        found, problems = scan_adapters(self._adapter_dirs)
        if self._warn is not None and self._listed is None:
            for problem in problems:
                self._warn(problem)
        served = {m["id"] for m in served_models(self._address, self._api_key, self._timeout)}
        missing = [a.name for a in found if a.name not in served]
        if missing and self._warn is not None and self._listed is None:
            self._warn(
                f"installed adapter(s) {', '.join(missing)} not served by {self._address.url}: "
                "load them with `python main.py vllm load NAME`"
            )
        self._listed = (now, [a for a in found if a.name in served])
        return list(self._listed[1])

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Generator[str, None, None]:
        """Yield answer text pieces; `adapter=None` means the plain base. Stops early when `cancel` is set.

        An adapter the server does not serve raises UsageError here, before any request.
        """
        names = [a.name for a in self.adapters()]
        if adapter is not None and adapter not in names:
            raise UsageError(
                f"unknown adapter {adapter!r}",
                f"adapters served: {', '.join(names) or 'none'} (see `python main.py vllm status`)",
            )
        body = self.request_body(messages, adapter, params)
        return self._stream(
            body,
            params.answer_prefix,
            cancel if cancel is not None else threading.Event(),
            stats if stats is not None else StreamStats(),
        )

    # -- request ---------------------------------------------------------------------------

    def request_body(
        self, messages: Sequence[Message], adapter: str | None, params: GenerationParams
    ) -> dict[str, Any]:
        """The /v1/chat/completions body: the route's model name, the turns, and how to sample."""
        turns = [m.as_dict() for m in messages]
        body: dict[str, Any] = {
            "model": adapter or self._base_name,
            "messages": turns,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,  # 0 is greedy on vLLM
            "repetition_penalty": self._repetition_penalty,  # a vLLM extension the local engine applies too
        }
        if self._stop:
            body["stop"] = list(self._stop)
        if params.answer_prefix:
            # The prefix becomes the model's own first words: the server continues this partial assistant turn.
            turns.append({"role": "assistant", "content": params.answer_prefix})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def _stream(
        self, body: dict[str, Any], prefix: str, cancel: threading.Event, stats: StreamStats
    ) -> Generator[str, None, None]:
        start = time.perf_counter()
        conn = self._address.connect(self._timeout)
        done = threading.Event()
        response: http.client.HTTPResponse | None = None
        try:
            try:
                conn.request(
                    "POST",
                    self._address.prefix + "/v1/chat/completions",
                    body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                    headers=request_headers(self._api_key, body=True),
                )
                # The socket is taken now: getresponse() detaches it from `conn` when the server will close.
                threading.Thread(target=_close_on_cancel, args=(conn.sock, cancel, done), daemon=True).start()
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if cancel.is_set():
                    return
                raise unreachable(self._address, exc, self._timeout) from None
            if response.status >= 400:
                raise server_error(self._address, response.status, response.read(), body["model"])
            if prefix:
                yield prefix  # already in the server's prompt as the start of the answer
            yield from self._pieces(response, cancel, stats, start)
        finally:
            done.set()
            # An open stream would keep the server generating for nobody.
            if response is not None:
                response.close()
            conn.close()
            stats.total_s = time.perf_counter() - start

    def _pieces(
        self, response: http.client.HTTPResponse, cancel: threading.Event, stats: StreamStats, start: float
    ) -> Iterator[str]:
        """The content pieces of a server-sent-events stream, filling `stats` from its usage chunk."""
        counted = 0
        while not cancel.is_set():
            try:
                line = response.readline()
            except (OSError, http.client.HTTPException) as exc:
                if cancel.is_set():
                    return
                raise unreachable(self._address, exc, self._timeout) from None
            if not line:
                if cancel.is_set():
                    return
                raise GenerationFailed(
                    f"vLLM server at {self._address.url} ended the answer early (no [DONE])",
                    "see the server's log (`python main.py vllm status` names it)",
                )
            data = line.decode("utf-8", "replace").strip()
            if not data.startswith("data:"):
                continue  # blank separators and ": keep-alive" comments
            data = data.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            chunk = _parse_chunk(data, self._address)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                stats.new_tokens = int(usage.get("completion_tokens") or counted)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if counted == 0:
                        stats.first_token_s = time.perf_counter() - start
                    counted += 1
                    stats.new_tokens = max(stats.new_tokens, counted)
                    yield piece


def _parse_chunk(data: str, address: ServerAddress) -> dict[str, Any]:
    """One `data:` payload; an error object the server sends mid-stream becomes GenerationFailed."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise GenerationFailed(
            f"vLLM server at {address.url} sent a malformed stream line: {data[:120]!r}",
            "is engine_url really an OpenAI-compatible server?",
        ) from None
    if not isinstance(chunk, dict):
        raise GenerationFailed(f"vLLM server at {address.url} sent {type(chunk).__name__} where a JSON object belongs")
    error = chunk.get("error")
    if error or chunk.get("object") == "error":
        message = error.get("message") if isinstance(error, dict) else error or chunk.get("message")
        raise GenerationFailed(
            f"vLLM server at {address.url} failed mid-answer: {message}",
            "see the server's log (`python main.py vllm status` names it)",
        )
    return chunk


def _close_on_cancel(sock: socket.socket | None, cancel: threading.Event, done: threading.Event) -> None:
    """Shut the socket as soon as `cancel` is set, so a read waiting on a slow server returns at once."""
    while sock is not None and not done.is_set():
        if cancel.wait(0.05):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked recv returns; the server sees the client leave
            except OSError:
                pass
            return
