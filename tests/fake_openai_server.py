"""A tiny OpenAI-compatible server on 127.0.0.1 for fast tests: scripted SSE answers, recorded requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """What the fake answers; tests change it between requests."""

    models: list[str] = field(default_factory=lambda: ["base"])
    pieces: list[str] = field(default_factory=lambda: ["你好", "，", "我在。"])
    piece_delay_s: float = 0.0
    endless: bool = False  # keep streaming pieces until the client leaves
    status: int = 200  # an error status answers chat completions with an OpenAI error body
    error_message: str = "boom"
    stall_s: float = 0.0  # wait this long before answering chat completions at all
    mid_stream_error: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 42, "completion_tokens": 3})
    healthy: bool = True


@dataclass
class Recorded:
    """Requests seen, and how the last stream ended."""

    requests: list[tuple[str, str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    chunks_sent: int = 0
    client_left: threading.Event = field(default_factory=threading.Event)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for _method, p, body, _headers in self.requests if p == path]


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = Script()
        self.seen = Recorded()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.server.seen.requests.append((self.command, self.path, body, dict(self.headers.items())))
        return body

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        script = self.server.script
        if self.path == "/health":
            self._json(200 if script.healthy else 503, {})
        elif self.path == "/v1/models":
            data = [{"id": m, "root": f"/models/{m}", "parent": None if m == "base" else "base"} for m in script.models]
            self._json(200, {"object": "list", "data": data})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = self._record()
        script = self.server.script
        if self.path == "/v1/load_lora_adapter":
            if body.get("lora_name") in script.models:
                self._json(
                    400, {"error": {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}}
                )
            else:
                script.models.append(body["lora_name"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            return
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        if script.stall_s:
            time.sleep(script.stall_s)
        if script.status >= 400:
            self._json(script.status, {"error": {"message": script.error_message, "code": script.status}})
            return
        if body.get("model") not in script.models:
            self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            self._stream(script)
        except (BrokenPipeError, ConnectionResetError):
            self.server.seen.client_left.set()

    def _stream(self, script: Script) -> None:
        def send(payload: Any) -> None:
            self.wfile.write(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()

        send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        self.wfile.write(b": keep-alive\n\n")
        count = 0
        while True:
            for piece in script.pieces:
                if script.piece_delay_s:
                    time.sleep(script.piece_delay_s)
                send({"choices": [{"index": 0, "delta": {"content": piece}}]})
                count += 1
                self.server.seen.chunks_sent = count
                if script.mid_stream_error and count == 2:
                    send({"error": {"message": script.mid_stream_error}})
                    return
            if not script.endless:
                break
        send({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        send({"choices": [], "usage": script.usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@contextmanager
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """A running FakeOpenAIServer on a free loopback port, shut down afterwards."""
    server = FakeOpenAIServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
