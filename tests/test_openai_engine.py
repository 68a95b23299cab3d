"""OpenAIEngine against a fake OpenAI-compatible server: streaming, answer prefix, routes, limits, errors, cancel."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.openai_engine import OpenAIEngine
from adapters.openai_http import ServerRefused, ServerUnreachable
from assistant.engine import GenerationParams, Message, StreamStats
from assistant.errors import USER_ERRORS, GenerationFailed, UsageError
from tests.fake_openai_server import FakeOpenAIServer, fake_openai_server
from tests.test_registry import make_adapter

QUESTION = [Message("system", "你是颐家小助手。"), Message("user", "老人跌倒后怎么办？")]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with fake_openai_server() as running:
        running.script.models = ["base", "caregiving"]
        yield running


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    store = tmp_path / "adapters"
    make_adapter(store, "caregiving")
    make_adapter(store, "legal")  # installed here, not served by the server
    return store


def engine_for(server: FakeOpenAIServer, stores: Path, **kwargs: object) -> OpenAIEngine:
    return OpenAIEngine(server.url, stores, **kwargs)  # type: ignore[arg-type]


def chat_bodies(server: FakeOpenAIServer) -> list[dict[str, object]]:
    return server.seen.bodies("/v1/chat/completions")


def test_pieces_join_to_the_answer_and_stats_come_from_usage(server: FakeOpenAIServer, stores: Path) -> None:
    stats = StreamStats()
    pieces = list(engine_for(server, stores).stream(QUESTION, None, GenerationParams(), stats=stats))
    assert pieces == ["你好", "，", "我在。"]
    assert stats.prompt_tokens == 42 and stats.new_tokens == 3
    assert 0 < stats.first_token_s <= stats.total_s
    body = chat_bodies(server)[0]
    assert body["messages"] == [m.as_dict() for m in QUESTION]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "continue_final_message" not in body


def test_the_route_picks_the_model_name(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores)
    list(engine.stream(QUESTION, "caregiving", GenerationParams()))
    list(engine.stream(QUESTION, None, GenerationParams()))
    assert [b["model"] for b in chat_bodies(server)] == ["caregiving", "base"]


def test_adapters_are_the_installed_ones_the_server_serves(server: FakeOpenAIServer, stores: Path) -> None:
    warnings: list[str] = []
    engine = engine_for(server, stores, warn=warnings.append)
    assert [(a.name, a.route) for a in engine.adapters()] == [("caregiving", "caregiving")]
    assert any("legal" in w and "vllm load" in w for w in warnings)
    with pytest.raises(UsageError, match="legal"):
        engine.stream(QUESTION, "legal", GenerationParams())
    assert chat_bodies(server) == []  # refused before any request


def test_answer_prefix_is_streamed_first_and_continued_by_the_server(server: FakeOpenAIServer, stores: Path) -> None:
    prefix = "我是颐家小助手，"
    pieces = list(engine_for(server, stores).stream(QUESTION, None, GenerationParams(answer_prefix=prefix)))
    assert pieces[0] == prefix and "".join(pieces) == prefix + "你好，我在。"
    body = chat_bodies(server)[0]
    assert body["messages"][-1] == {"role": "assistant", "content": prefix}  # type: ignore[index]
    assert body["messages"][:-1] == [m.as_dict() for m in QUESTION]  # type: ignore[index]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_limits_sampling_and_stop_are_forwarded(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores, stop=["\n\n用户："], repetition_penalty=1.1, api_key="sekret")
    list(engine.stream(QUESTION, None, GenerationParams(max_new_tokens=17, temperature=0.0)))
    list(engine.stream(QUESTION, None, GenerationParams(max_new_tokens=5, temperature=0.7)))
    first, second = chat_bodies(server)
    assert (first["max_tokens"], first["temperature"], first["stop"]) == (17, 0.0, ["\n\n用户："])
    assert first["repetition_penalty"] == 1.1
    assert (second["max_tokens"], second["temperature"]) == (5, 0.7)
    assert all(h.get("Authorization") == "Bearer sekret" for _m, _p, _b, h in server.seen.requests)


def test_http_500_is_a_clear_error_with_the_servers_message(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores)
    server.script.status, server.script.error_message = 500, "CUDA out of memory"
    with pytest.raises(ServerRefused) as caught:
        list(engine.stream(QUESTION, "caregiving", GenerationParams()))
    assert caught.value.status == 500
    assert "HTTP 500" in caught.value.message and "CUDA out of memory" in caught.value.message
    assert server.url in caught.value.message and "log" in caught.value.hint
    assert isinstance(caught.value, USER_ERRORS)


def test_a_model_the_server_lost_is_a_404_with_what_to_do(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores)
    engine.adapters()  # listed while the server still served it
    server.script.models = ["base"]
    with pytest.raises(ServerRefused, match="HTTP 404") as caught:
        list(engine.stream(QUESTION, "caregiving", GenerationParams()))
    assert "vllm load caregiving" in caught.value.hint


def test_an_error_sent_mid_stream_fails_the_answer(server: FakeOpenAIServer, stores: Path) -> None:
    server.script.mid_stream_error = "engine dead"
    got: list[str] = []
    with pytest.raises(GenerationFailed, match="engine dead"):
        for piece in engine_for(server, stores).stream(QUESTION, None, GenerationParams()):
            got.append(piece)
    assert got == ["你好", "，"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connection_refused_says_how_to_start_the_server(stores: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable) as caught:
        OpenAIEngine(url, stores)
    assert url in caught.value.message and "not reachable" in caught.value.message
    assert "python main.py vllm start" in caught.value.hint


def test_a_server_that_went_away_fails_the_answer_clearly(stores: Path) -> None:
    with fake_openai_server() as server:
        engine = engine_for(server, stores)
    with pytest.raises(ServerUnreachable, match="not reachable"):
        list(engine.stream(QUESTION, None, GenerationParams()))


def test_a_stalled_server_times_out(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores, timeout_s=0.3)
    server.script.stall_s = 2.0
    started = time.perf_counter()
    with pytest.raises(ServerUnreachable, match=r"sent nothing for 0\.3 s"):
        list(engine.stream(QUESTION, None, GenerationParams()))
    assert time.perf_counter() - started < 1.5


def test_a_server_that_stalls_between_pieces_times_out(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores, timeout_s=0.3)
    server.script.piece_delay_s = 1.0
    with pytest.raises(ServerUnreachable, match="sent nothing"):
        list(engine.stream(QUESTION, None, GenerationParams()))


def test_cancel_stops_within_a_couple_of_pieces_and_closes_the_connection(
    server: FakeOpenAIServer, stores: Path
) -> None:
    server.script.endless, server.script.piece_delay_s = True, 0.02
    cancel = threading.Event()
    got: list[str] = []
    for piece in engine_for(server, stores).stream(QUESTION, None, GenerationParams(), cancel=cancel):
        got.append(piece)
        if len(got) == 5:
            cancel.set()
    assert 5 <= len(got) <= 7
    assert server.seen.client_left.wait(3.0), "the server kept streaming to a client that left"
    sent_when_noticed = server.seen.chunks_sent
    time.sleep(0.2)
    assert server.seen.chunks_sent == sent_when_noticed  # nothing more is generated for nobody


def test_cancel_while_the_server_is_silent_returns_at_once(server: FakeOpenAIServer, stores: Path) -> None:
    engine = engine_for(server, stores, timeout_s=30.0)
    server.script.piece_delay_s = 5.0
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.perf_counter()
    assert list(engine.stream(QUESTION, None, GenerationParams(), cancel=cancel)) == []
    assert time.perf_counter() - started < 2.0


def test_a_server_without_the_base_name_is_refused_at_start(server: FakeOpenAIServer, stores: Path) -> None:
    server.script.models = ["Qwen/Qwen2.5-0.5B-Instruct"]
    with pytest.raises(GenerationFailed, match="serves no model named 'base'"):
        engine_for(server, stores)


def test_a_bad_url_is_a_usage_error(stores: Path) -> None:
    with pytest.raises(UsageError, match="not an http"):
        OpenAIEngine("127.0.0.1:8011", stores)
