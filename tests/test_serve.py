"""`serve` on a tiny random Qwen2 + LoRA: routing, streaming, usage, sampling, conversation, the openai client."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from assistant.config import load_settings
from assistant.engine import GenerationParams, Message, StreamStats
from assistant.router import RouteChoice
from assistant.session import ChatSession, Done
from tests.fakes import HashingEncoder
from tests.import_graph import room_of
from tests.serve_fakes import PacedEngine, ask_body, live_server, request, sse_events, write_settings
from tests.tiny_models import build_tiny_lora, build_tiny_qwen2

CARE = "糖尿病患者的照护内容有哪些"
NEWS = "梅西率迈阿密国际夺队史首冠"


class RecordingEngine:
    """The real engine, with every stream's stats, adapter, messages and params kept for comparison."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[list[Message], str | None, GenerationParams, StreamStats]] = []

    def info(self) -> Any:
        return self.inner.info()

    def adapters(self) -> Any:
        return self.inner.adapters()

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        stats = stats if stats is not None else StreamStats()
        self.calls.append((list(messages), adapter, params, stats))
        return self.inner.stream(messages, adapter, params, cancel, stats)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live server over a tiny Qwen2 with one LoRA named `caregiving` on the `caregiving` route."""
    import torch

    root = tmp_path_factory.mktemp("serve-tiny")
    base = build_tiny_qwen2(root / "base")
    config = write_settings(root)
    build_tiny_lora(base, root / "adapters" / "caregiving", "caregiving", "caregiving", seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
            patch.setenv(var, str(root / var.lower()))
        settings = load_settings(config).with_overrides(base=str(base), quantization="bf16", max_new_tokens=12)
        from adapters.wiring import build_engine

        engine = RecordingEngine(build_engine(settings, progress=lambda line: None))
        log: list[str] = []
        with live_server(settings, engine, log, max_tokens=16) as server:
            yield {"url": server.url, "engine": engine, "settings": settings, "log": log}
    torch.set_num_threads(threads)


def chat(url: str, body: dict[str, Any], **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    return request(url, "POST", "/v1/chat/completions", body, **kwargs)


@pytest.mark.parametrize(
    ("model", "question", "route", "adapter", "forced"),
    [
        ("auto", CARE, "caregiving", "caregiving", False),
        (None, NEWS, "general", None, False),
        ("base", CARE, "general", None, True),
        ("general", CARE, "general", None, True),
        ("caregiving", NEWS, "caregiving", "caregiving", True),
    ],
)
def test_model_routes_through_the_router_or_forces_a_route(
    tiny: dict[str, Any], model: str | None, question: str, route: str, adapter: str | None, forced: bool
) -> None:
    body = ask_body(question)
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    status, answer, headers = chat(tiny["url"], body)
    assert status == 200, answer
    assert headers["x-route"] == route and headers["x-adapter"] == (adapter or "base")
    assert 0.0 < float(headers["x-route-confidence"]) <= 1.0
    assert answer["route"]["route"] == route and answer["route"]["forced"] is forced
    assert answer["model"] == (adapter or "base")
    assert tiny["engine"].calls[-1][1] == adapter  # the engine really answered through that adapter


def test_usage_and_finish_reason_are_the_engines_own_counts(tiny: dict[str, Any]) -> None:
    status, answer, _ = chat(tiny["url"], ask_body(NEWS, max_tokens=5))
    assert status == 200
    stats = tiny["engine"].calls[-1][3]
    assert stats.prompt_tokens > 100  # the identity system prompt alone is longer
    assert answer["usage"] == {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": stats.prompt_tokens + stats.new_tokens,
    }
    expected = "length" if stats.finish_reason == "length" else "stop"
    assert answer["choices"][0]["finish_reason"] == expected
    assert stats.new_tokens <= 5


def test_stream_is_openai_chunks_with_the_route_first_and_done_last(tiny: dict[str, Any]) -> None:
    whole_status, whole, _ = chat(tiny["url"], ask_body(CARE))
    body = ask_body(CARE, stream=True, stream_options={"include_usage": True})
    status, text, headers = chat(tiny["url"], body)
    assert whole_status == status == 200
    assert headers["content-type"].startswith("text/event-stream") and headers["x-route"] == "caregiving"
    events = sse_events(text)
    assert events[-1] == "[DONE]" and text.endswith("data: [DONE]\n\n")
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first, *middle, last, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["route"]["route"] == "caregiving" and first["route"]["adapter"] == "caregiving"
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *middle])
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in middle)
    assert streamed == whole["choices"][0]["message"]["content"]  # greedy: the same answer either way
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["choices"][0]["delta"] == {}
    assert "sources" in last
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_sampling_parameters_reach_the_engine(tiny: dict[str, Any]) -> None:
    body = ask_body(NEWS, temperature=0.8, top_p=0.9, seed=7, stop=["。", "END"], max_tokens=9)
    first = chat(tiny["url"], body)[1]
    params = tiny["engine"].calls[-1][2]
    assert (params.temperature, params.top_p, params.seed, params.stop, params.max_new_tokens) == (
        0.8,
        0.9,
        7,
        ("。", "END"),
        9,
    )
    again = chat(tiny["url"], body)[1]
    assert again["choices"][0]["message"] == first["choices"][0]["message"]  # the same seed, the same sample
    single = chat(tiny["url"], ask_body(NEWS, stop="END"))[1]
    assert tiny["engine"].calls[-1][2].stop == ("END",) and single["choices"]
    chat(tiny["url"], ask_body(NEWS))
    defaults = tiny["engine"].calls[-1][2]
    assert (defaults.temperature, defaults.max_new_tokens, defaults.stop) == (0.0, 12, ())  # the settings' own


def test_conversation_becomes_history_and_a_system_message_adds_to_the_identity(tiny: dict[str, Any]) -> None:
    from adapters.wiring import system_prompt

    body = {
        "model": "base",  # the general route: no knowledge passages wrapped around the question
        "messages": [
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": "a joke"}]},
        ],
    }
    status, _, _ = chat(tiny["url"], body)
    assert status == 200
    messages = tiny["engine"].calls[-1][0]
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    identity = system_prompt(tiny["settings"])
    assert messages[0].content.startswith(identity) and messages[0].content.endswith("Answer in English.")
    assert (messages[1].content, messages[2].content) == ("你好", "你好！")
    assert messages[3].content == "Tell me\na joke"


def test_max_tokens_over_the_limit_is_clamped_and_said(tiny: dict[str, Any]) -> None:
    status, answer, headers = chat(tiny["url"], ask_body(NEWS, max_tokens=500))
    assert status == 200
    assert headers["x-max-tokens-clamped"] == "16"
    assert any("500" in w and "16" in w for w in answer["warnings"])
    assert tiny["engine"].calls[-1][2].max_new_tokens == 16 and answer["usage"]["completion_tokens"] <= 16


def test_a_conversation_longer_than_the_context_is_cut_and_said(tiny: dict[str, Any]) -> None:
    turns: list[dict[str, str]] = []
    for i in range(12):
        turns += [{"role": "user", "content": f"问题{i} " + "老人照护" * 60}, {"role": "assistant", "content": "好"}]
    body = {"messages": [*turns, {"role": "user", "content": NEWS}], "max_tokens": 4}
    status, answer, headers = chat(tiny["url"], body)
    assert status == 200
    assert headers["x-prompt-truncated"] == "true"
    assert any("context" in w for w in answer["warnings"])
    assert tiny["engine"].calls[-1][3].truncated_prompt


def test_the_openai_client_gets_answers_streamed_and_not(tiny: dict[str, Any]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=tiny["url"] + "/v1", api_key="not-needed-on-loopback", max_retries=0)
    assert [m.id for m in client.models.list()] == ["auto", "base", "caregiving"]
    whole = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": CARE}])
    assert whole.model == "caregiving" and whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens == tiny["engine"].calls[-1][3].new_tokens
    extra = whole.model_extra or {}
    assert extra["route"]["route"] == "caregiving" and extra["sources"] == []
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": CARE}], stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content


def test_route_endpoint_mirrors_route_json(tiny: dict[str, Any]) -> None:
    from adapters.wiring import build_router

    status, one, _ = request(tiny["url"], "POST", "/v1/route", {"input": CARE})
    status_many, many, _ = request(tiny["url"], "POST", "/v1/route", {"input": [CARE, NEWS]})
    assert status == status_many == 200
    router = build_router(tiny["settings"], encoder=HashingEncoder(), progress=lambda line: None)
    assert one == {"query": CARE, **router.route(CARE).as_json()}
    assert [r["route"] for r in many["data"]] == ["caregiving", "general"]
    assert request(tiny["url"], "POST", "/v1/route", {"input": ["ok", ""]})[0] == 400


def test_the_request_log_has_route_and_tokens_but_never_the_question(tiny: dict[str, Any]) -> None:
    secret = "秘密问题ZQX"
    chat(tiny["url"], ask_body(secret))
    line = next(line for line in reversed(tiny["log"]) if "/v1/chat/completions" in line)
    assert " 200 " in line and "route=" in line and "adapter=" in line and "tokens=" in line and "latency=" in line
    assert not any(secret in line for line in tiny["log"])


# -- the session's per-request parameters and counts --------------------------------------------


class OneRoute:
    def route(self, text: str) -> RouteChoice:
        from assistant.session import forced_choice

        return forced_choice("general", None)


def test_ask_takes_per_request_params_and_done_carries_the_engines_counts() -> None:
    engine = PacedEngine()
    session = ChatSession(OneRoute(), engine, GenerationParams(max_new_tokens=50))
    events = list(session.ask("a question", params=GenerationParams(max_new_tokens=3, seed=5)))
    done = events[-1]
    assert isinstance(done, Done)
    call = engine.calls[-1]
    assert call.params.max_new_tokens == 3 and call.params.seed == 5
    assert (done.prompt_tokens, done.new_tokens, done.finish_reason) == (call.stats.prompt_tokens, 3, "length")
    assert done.prompt_tokens > 0
    list(session.ask("again"))
    assert engine.calls[-1].params.max_new_tokens == 50  # the session's own params are untouched
    cancel = threading.Event()
    cancel.set()
    stopped = list(session.ask("stop at once", cancel))[-1]
    assert isinstance(stopped, Done) and stopped.stopped and stopped.finish_reason == "cancelled"


def test_the_server_is_a_shell_room_of_its_own() -> None:
    assert room_of("assistant.server.app") == "assistant.server"
    assert room_of("assistant.server") == "assistant.server"
    assert room_of("assistant.serverless") == "assistant"
