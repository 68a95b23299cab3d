"""A paced fake engine and a live `serve` over it: the real wiring with only the model parts replaced."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from assistant.config import Settings
from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from assistant.errors import GenerationFailed
from tests.fakes import HashingEncoder, adapter_info

#: Labelled lines the router is fitted on (a dozen: seconds, not minutes).
TRAIN = [
    ("糖尿病患者的照护内容有哪些", "caregiving"),
    ("脑卒中老人怎么护理", "caregiving"),
    ("卧床老人怎么翻身防压疮", "caregiving"),
    ("阿尔茨海默病老人的照护", "caregiving"),
    ("老人跌倒后怎么照护", "caregiving"),
    ("失能老人怎么洗澡", "caregiving"),
    ("梅西率迈阿密国际夺队史首冠", "general"),
    ("今天股市大涨", "general"),
    ("信用卡怎么还款", "general"),
    ("明天天气怎么样", "general"),
    ("给我讲个笑话", "general"),
    ("python怎么读取文件", "general"),
]
#: A question containing this makes the paced engine fail after its first token...
FAIL_MARK = "[engine-fails]"
#: ...and this, before any text (the in-character start of an answer included).
FAIL_AT_ONCE = "[engine-fails-at-once]"


@dataclass
class Call:
    """One stream the engine ran: what it was given and how it ended."""

    messages: list[Message]
    adapter: str | None
    params: GenerationParams
    stats: StreamStats
    cancelled_after: int | None = None  # tokens yielded before the cancel was seen
    cancelled_at: float | None = None  # time.monotonic() when it was seen


@dataclass
class PacedEngine:
    """Yields one word per `delay_s`, checks `cancel` between tokens like the real engine, counts like it too."""

    delay_s: float = 0.0
    adapters_list: list[AdapterInfo] = field(default_factory=lambda: [adapter_info("caregiving", "caregiving")])
    calls: list[Call] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0

    def info(self) -> EngineInfo:
        return EngineInfo("paced-fake", "none", "cpu")

    def adapters(self) -> list[AdapterInfo]:
        return list(self.adapters_list)

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        stats = stats if stats is not None else StreamStats()
        call = Call(list(messages), adapter, params, stats)
        self.calls.append(call)
        return self._run(call, cancel or threading.Event())

    def _run(self, call: Call, cancel: threading.Event) -> Iterator[str]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            question = call.messages[-1].content
            call.stats.prompt_tokens = sum(len(m.content.split()) + 4 for m in call.messages)
            if FAIL_AT_ONCE in question:
                raise GenerationFailed("the fake engine fails on purpose, before any text")
            if call.params.answer_prefix:
                yield call.params.answer_prefix
            # Every few tokens end a sentence, as a model's do: the answer guard lets text out per sentence.
            words = ["answer", " from", f" {call.adapter or 'base'}", " to", f" {question.split()[-1]}", "。"]
            words += [f" w{i}。" for i in range(200)]
            call.stats.finish_reason = "length"
            fail_at = 1 if FAIL_MARK in question else None
            for i, word in enumerate(words[: call.params.max_new_tokens]):
                if cancel.is_set():
                    call.cancelled_after, call.cancelled_at = i, time.monotonic()
                    call.stats.finish_reason = "cancelled"
                    return
                if i == fail_at:
                    raise GenerationFailed("the fake engine fails on purpose")
                time.sleep(self.delay_s)
                call.stats.new_tokens += 1
                yield word
        finally:
            self.running -= 1


def write_settings(root: Path) -> Path:
    """A settings file: the routing lines above, an empty adapter store."""
    train = root / "train.txt"
    train.write_text("".join(f"{label} {text}\n" for text, label in TRAIN), encoding="utf-8")
    (root / "adapters").mkdir(exist_ok=True)
    config = root / "config.toml"
    config.write_text(f'routing_data = ["{train}"]\nadapter_dirs = ["{root / "adapters"}"]\n', encoding="utf-8")
    return config


@contextmanager
def live_server(settings: Settings, engine: Any, log: list[str] | None = None, **options: Any) -> Iterator[Any]:
    """`main.serve_loader` + `assistant.server.start` on a free loopback port, the hashing encoder and `engine` in."""
    import main
    from assistant.server import ServeOptions, start

    lines = log if log is not None else []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("adapters.wiring.build_encoder", lambda settings: HashingEncoder())
        patch.setattr("adapters.wiring.build_engine", lambda settings, progress=None: engine)
        server = start(
            main.serve_loader(settings), ServeOptions(**{"port": 0, **options}), lambda line: lines.append(line)
        )
        try:
            wait_ready(server.url)
        except BaseException:
            server.stop()
            raise
    try:
        yield server
    finally:
        server.stop()


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body, _ = request(url, "GET", "/health")
        if status == 200:
            return
        assert body["status"] == "loading", body
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


def request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout_s: float = 60.0,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or raw text, lower-cased headers) of one request over a fresh connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode("utf-8"))
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode("utf-8")
        found = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    try:
        return response.status, json.loads(text), found
    except json.JSONDecodeError:
        return response.status, text, found


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, JSON-decoded ([DONE] kept as the string)."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def ask_body(question: str, **more: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": question}], **more}
