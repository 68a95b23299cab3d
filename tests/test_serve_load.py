"""`serve` under load on a paced fake engine: the bounded queue, clients that leave, engine failures, 16 clients."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from assistant.config import load_settings
from tests.serve_fakes import (
    FAIL_AT_ONCE,
    FAIL_MARK,
    PacedEngine,
    ask_body,
    live_server,
    request,
    sse_events,
    write_settings,
)

DELAY_S = 0.05  # one fake token


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-load")
    write_settings(root)
    return root


@pytest.fixture
def serve(root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """serve(engine, **options) -> a context manager over a live server (the router fitted once per module)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    settings = load_settings(root / "config.toml")

    def make(engine: PacedEngine, **options: Any) -> Any:
        return live_server(settings, engine, **options)

    return make


def chat(url: str, body: dict[str, Any], timeout_s: float = 60.0) -> tuple[int, Any, dict[str, str]]:
    return request(url, "POST", "/v1/chat/completions", body, timeout_s=timeout_s)


def queue_state(url: str) -> dict[str, Any]:
    queue: dict[str, Any] = request(url, "GET", "/health")[1]["queue"]
    return queue


def wait_until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


class OpenStream:
    """A streaming request on its own connection, read line by line, closed whenever the test says."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.response: http.client.HTTPResponse | None = None
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})

    def read_events(self, count: int) -> list[Any]:
        response = self.response = self.response or self.conn.getresponse()
        events: list[Any] = []
        while len(events) < count:
            line = response.readline().decode("utf-8").strip()
            if line.startswith("data: "):
                events.append(line[6:])
        return events

    def close(self) -> None:
        if self.response is not None:
            self.response.close()  # its file object holds the socket open too
        self.conn.close()


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=24) as pool:
        yield pool


def test_a_full_queue_answers_503_with_retry_after(serve: Any, background: ThreadPoolExecutor) -> None:
    engine = PacedEngine(DELAY_S)
    with serve(engine, queue_size=2) as server:
        long = ask_body("first", max_tokens=30)
        running = background.submit(chat, server.url, long)
        wait_until(lambda: engine.running == 1)
        waiting = []
        for i in range(2):  # one at a time, so their order of arrival is known
            waiting.append(background.submit(chat, server.url, ask_body(f"q{i}", max_tokens=2)))
            wait_until(lambda n=i + 1: queue_state(server.url)["waiting"] == n)
        started = time.monotonic()
        status, body, headers = chat(server.url, ask_body("one too many"))
        assert time.monotonic() - started < 2.0  # refused at once, never left hanging
        assert status == 503 and body["error"]["code"] == "queue_full" and body["error"]["type"] == "server_error"
        assert int(headers["retry-after"]) >= 1
        assert [f.result()[0] for f in [running, *waiting]] == [200, 200, 200]
        assert [c.messages[-1].content for c in engine.calls] == ["first", "q0", "q1"]  # first come, first served


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_mid_answer_frees_the_engine_within_a_token_or_two(
    serve: Any, background: ThreadPoolExecutor, stream: bool
) -> None:
    engine = PacedEngine(DELAY_S)
    with serve(engine) as server:
        leaver = OpenStream(server.url, ask_body("will leave", max_tokens=200, stream=stream))
        if stream:
            assert len(leaver.read_events(4)) == 4  # the role chunk and three words
        else:
            wait_until(lambda: bool(engine.calls) and engine.calls[0].stats.new_tokens >= 3)
        at_close = engine.calls[0].stats.new_tokens
        closed = time.monotonic()
        leaver.close()
        status, answer, _ = chat(server.url, ask_body("next in line", max_tokens=3))
        waited_s = time.monotonic() - closed
        first = engine.calls[0]
        assert first.cancelled_after is not None and first.cancelled_at is not None
        assert first.cancelled_after - at_close <= 2  # stopped within a couple of tokens
        assert first.cancelled_at - closed < 10 * DELAY_S
        assert status == 200 and answer["usage"]["completion_tokens"] == 3
        assert waited_s < 2.0  # 200 tokens would have taken 10 s
        assert engine.most_at_once == 1


def test_a_client_that_leaves_the_queue_frees_its_place(serve: Any, background: ThreadPoolExecutor) -> None:
    engine = PacedEngine(DELAY_S)
    with serve(engine, queue_size=1) as server:
        running = background.submit(chat, server.url, ask_body("running", max_tokens=40))
        wait_until(lambda: engine.running == 1)
        quitter = OpenStream(server.url, ask_body("gives up while queued"))
        wait_until(lambda: queue_state(server.url)["waiting"] == 1)
        quitter.close()
        wait_until(lambda: queue_state(server.url)["waiting"] == 0, timeout_s=2.0)
        status, _, _ = chat(server.url, ask_body("takes the place", max_tokens=2))  # not 503: the place is free
        assert status == 200 and running.result()[0] == 200
        assert [c.messages[-1].content for c in engine.calls] == ["running", "takes the place"]


def test_an_engine_failure_is_a_500_and_the_next_request_is_served(serve: Any) -> None:
    engine = PacedEngine()
    with serve(engine) as server:
        status, body, _ = chat(server.url, ask_body(f"please {FAIL_MARK}"))
        assert status == 500 and body["error"]["code"] == "engine_error"
        assert set(body["error"]) == {"message", "type", "param", "code"} and "on purpose" in body["error"]["message"]
        status, body, _ = chat(server.url, ask_body(f"please {FAIL_AT_ONCE}", stream=True))
        assert status == 500 and body["error"]["code"] == "engine_error"  # nothing streamed yet: a plain 500
        status, text, _ = chat(server.url, ask_body(f"please {FAIL_MARK}", stream=True))
        events = sse_events(text)
        assert status == 200 and events[-1] == "[DONE]"  # the first words were out: the stream ends with the error
        assert events[-2]["error"]["code"] == "engine_error"
        assert events[1]["choices"][0]["delta"]["content"]
        status, body, _ = chat(server.url, ask_body("and now a good one", max_tokens=4))
        assert status == 200 and body["usage"]["completion_tokens"] == 4


def _client(url: str, client: int, requests: int) -> list[tuple[str, int, str]]:
    """(tag, status, answer text or error code) for each request this client sends, one after another."""
    out = []
    for i in range(requests):
        tag = f"tag-{client}-{i}"
        stream = (client + i) % 2 == 0
        status, body, headers = chat(url, ask_body(f"问题 {tag}", max_tokens=12, stream=stream), timeout_s=120)
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and body["error"]["code"] == "queue_full"
            out.append((tag, status, "queue_full"))
        elif stream:
            events = sse_events(body)
            assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
            out.append((tag, status, text))
        else:
            assert body["choices"][0]["finish_reason"] == "length"
            out.append((tag, status, body["choices"][0]["message"]["content"]))
    return out


def test_sixteen_clients_each_get_exactly_their_own_answer_or_a_clear_503(serve: Any) -> None:
    engine = PacedEngine(0.002)
    clients, per_client = 16, 4
    with serve(engine, queue_size=8) as server:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = [r for rs in pool.map(lambda c: _client(server.url, c, per_client), range(clients)) for r in rs]
        assert request(server.url, "GET", "/health")[0] == 200  # still up
    tags = [f"tag-{c}-{i}" for c in range(clients) for i in range(per_client)]
    assert sorted(t for t, _, _ in results) == sorted(tags)  # every request got one reply: none lost, none doubled
    answered = [(t, text) for t, status, text in results if status == 200]
    refused = [t for t, status, _ in results if status == 503]
    assert len(answered) + len(refused) == len(tags) and answered
    for tag, text in answered:
        assert f" to {tag}。" in text and text.count("tag-") == 1  # its own answer, complete, no one else's
        assert text.endswith(" w5。")  # 12 tokens: nothing cut, nothing appended
    asked = [c.messages[-1].content.split()[-1] for c in engine.calls]
    assert sorted(asked) == sorted(t for t, _ in answered)  # the engine answered each accepted request once
    assert engine.most_at_once == 1


def test_the_serve_bench_measures_latency_and_queue_wait_per_concurrency(serve: Any) -> None:
    from measurement.bench.serve_bench import markdown_rows, measure_levels

    engine = PacedEngine(0.001)
    with serve(engine, queue_size=8) as server:
        levels = measure_levels(server.url, (1, 4), requests_per_level=8, max_tokens=5, log=lambda line: None)
    assert [level["clients"] for level in levels] == [1, 4]
    for level in levels:
        assert level["requests"] == 8 and level["ok"] + level["refused"] == 8 and level["ok"] > 0
        assert 0 < level["latency_ms_p50"] <= level["latency_ms_p95"]
        assert 0 <= level["queue_ms_p50"] <= level["queue_ms_p95"]
        assert level["answers_per_s"] > 0
    assert levels[1]["queue_ms_p95"] >= levels[0]["queue_ms_p95"]  # four clients wait for each other
    assert len(engine.calls) == sum(level["ok"] for level in levels)
    table = "\n".join(markdown_rows({"levels": levels, "answer_tokens": 5, "ready_s": 1.0, "method": "loopback"}))
    assert "| 4 | 8 | 0 |" in table and "5-token answers" in table


def test_the_gate_admits_its_slots_then_queues_in_order_and_forgets_those_who_leave() -> None:
    import asyncio

    from assistant.server.gate import EngineGate, QueueFull

    async def scenario() -> list[str]:
        gate = EngineGate(capacity=2, slots=2)
        admitted: list[str] = []

        async def visit(name: str) -> None:
            await gate.enter()
            admitted.append(name)

        await visit("a")
        await visit("b")  # two slots: both at once
        c = asyncio.ensure_future(visit("c"))
        d = asyncio.ensure_future(visit("d"))
        await asyncio.sleep(0)
        assert gate.waiting == 2 and gate.running == 2
        try:
            await gate.enter()
            raise AssertionError("a third waiter got in")
        except QueueFull:
            pass
        c.cancel()  # c's client left while waiting
        await asyncio.sleep(0)
        assert gate.waiting == 1
        gate.release(1.0)
        await d  # d moves up, not the one who left
        gate.release(1.0)
        gate.release(1.0)
        assert gate.running == 0 and gate.waiting == 0 and gate.retry_after_s() >= 1
        return admitted

    assert asyncio.run(scenario()) == ["a", "b", "d"]
