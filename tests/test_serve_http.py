"""`serve` on a fake engine: bad input, the API key, CORS, loading, the request log, refusing to expose itself."""

from __future__ import annotations

import hmac
import http.client
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assistant.config import Settings, load_settings
from assistant.errors import ModelUnavailable
from assistant.server import ServeOptions, start
from assistant.session import ChatSession
from tests.fakes import HashingEncoder
from tests.serve_fakes import PacedEngine, ask_body, live_server, request, wait_ready, write_settings

ERROR_KEYS = {"message", "type", "param", "code"}


def chat(url: str, body: dict[str, Any], **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    return request(url, "POST", "/v1/chat/completions", body, **kwargs)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One settings file and cache for the module's fake servers (the router is fitted once)."""
    root = tmp_path_factory.mktemp("serve-fake")
    write_settings(root)
    return root


def fake_settings(root: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    return load_settings(root / "config.toml")


@pytest.fixture
def fake(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    engine = PacedEngine()
    log: list[str] = []
    settings = fake_settings(fake_root, monkeypatch)
    with live_server(settings, engine, log, max_body_bytes=64 * 1024) as server:
        yield {"url": server.url, "engine": engine, "log": log}


BAD_BODIES: list[tuple[str, bytes, int, str | None, str | None]] = [
    ("invalid JSON", b'{"messages": [', 400, None, "invalid_json"),
    ("not UTF-8", b'{"messages": "\xff\xfe"}', 400, None, "invalid_encoding"),
    ("empty body", b"", 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, "invalid_json"),
    ("no messages", b'{"model": "auto"}', 400, "messages", "missing_required_parameter"),
    ("empty messages", b'{"messages": []}', 400, "messages", "invalid_value"),
    ("a tool role", b'{"messages": [{"role": "tool", "content": "x"}]}', 400, "messages[0].role", "invalid_role"),
    ("content a number", b'{"messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content", None),
    (
        "an image part",
        b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
        400,
        "messages[0].content[0]",
        "invalid_content",
    ),
    (
        "the assistant last",
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        400,
        "messages",
        "invalid_role",
    ),
    ("a blank question", b'{"messages": [{"role": "user", "content": "  "}]}', 400, "messages[0].content", None),
    ("unknown model", b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "a"}]}', 404, "model", None),
    ("temperature 5", b'{"temperature": 5, "messages": [{"role": "user", "content": "a"}]}', 400, "temperature", None),
    ("max_tokens 0", b'{"max_tokens": 0, "messages": [{"role": "user", "content": "a"}]}', 400, "max_tokens", None),
    (
        "five stops",
        b'{"stop": ["a","b","c","d","e"], "messages": [{"role": "user", "content": "a"}]}',
        400,
        "stop",
        None,
    ),
    ("stream as text", b'{"stream": "yes", "messages": [{"role": "user", "content": "a"}]}', 400, "stream", None),
    ("two answers", b'{"n": 2, "messages": [{"role": "user", "content": "a"}]}', 400, "n", "unsupported"),
    ("NaN", b'{"top_p": NaN, "messages": [{"role": "user", "content": "a"}]}', 400, None, "invalid_json"),
]


@pytest.mark.parametrize(("what", "raw", "status", "param", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_input_gets_an_openai_error_object(
    fake: dict[str, Any], what: str, raw: bytes, status: int, param: str | None, code: str | None
) -> None:
    got, body, headers = chat(fake["url"], {}, raw=raw)
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["param"] == param and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    assert headers["content-type"] == "application/json"
    assert fake["engine"].calls == []  # nothing reached the model
    assert request(fake["url"], "GET", "/health")[0] == 200  # and the server is still up


def test_unknown_model_lists_the_models(fake: dict[str, Any]) -> None:
    _, body, _ = chat(fake["url"], ask_body("a", model="gpt-4o"))
    assert body["error"]["code"] == "model_not_found"
    assert "auto, base, caregiving" in body["error"]["message"]


def test_a_body_over_the_limit_is_413_with_or_without_a_length(fake: dict[str, Any]) -> None:
    big = ask_body("长" * 40_000)  # 120 kB of UTF-8 against a 64 kB limit
    status, body, _ = chat(fake["url"], big)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    host, port = fake["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    data = b'{"messages": [{"role": "user", "content": "' + b"x" * 100_000 + b'"}]}'
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_unknown_paths_and_methods_get_the_error_shape(fake: dict[str, Any]) -> None:
    status, body, _ = request(fake["url"], "GET", "/v2/nothing")
    assert status == 404 and set(body["error"]) == ERROR_KEYS
    status, body, _ = request(fake["url"], "GET", "/v1/chat/completions")
    assert status == 405 and set(body["error"]) == ERROR_KEYS


def test_content_parts_are_joined_and_the_question_reaches_the_engine(fake: dict[str, Any]) -> None:
    parts = [{"type": "text", "text": "第一段"}, {"type": "text", "text": "第二段"}]
    status, answer, _ = chat(fake["url"], {"messages": [{"role": "user", "content": parts}], "max_tokens": 3})
    assert status == 200 and answer["usage"]["completion_tokens"] == 3
    assert fake["engine"].calls[-1].messages[-1].content == "第一段\n第二段"
    assert answer["choices"][0]["finish_reason"] == "length"


def test_api_key_is_required_and_compared_in_constant_time(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with live_server(fake_settings(fake_root, monkeypatch), PacedEngine(), api_key="s3cret") as server:
        status, body, headers = request(server.url, "GET", "/v1/models")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert headers["www-authenticate"] == "Bearer"
        status, body, _ = chat(server.url, ask_body("a"), headers={"Authorization": "Bearer wrong"})
        assert status == 401 and set(body["error"]) == ERROR_KEYS
        assert (b"wrong", b"s3cret") in compared
        assert request(server.url, "GET", "/v1/models", headers={"Authorization": "Basic s3cret"})[0] == 401
        assert request(server.url, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert request(server.url, "GET", "/health")[0] == 200  # probes need no key


def test_cors_only_for_configured_origins(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = "https://care.example"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    settings = fake_settings(fake_root, monkeypatch)
    with live_server(settings, PacedEngine(), cors_origins=(origin,)) as server:
        status, _, headers = request(server.url, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert headers.get("access-control-allow-origin") == origin
        _, _, headers = chat(server.url, ask_body("a", max_tokens=1), headers={"Origin": origin})
        assert headers["access-control-allow-origin"] == origin
        assert "x-route" in headers["access-control-expose-headers"]
    with live_server(settings, PacedEngine()) as server:
        status, _, headers = request(server.url, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert status == 405 and "access-control-allow-origin" not in headers
        _, _, headers = chat(server.url, ask_body("a", max_tokens=1), headers={"Origin": origin})
        assert "access-control-allow-origin" not in headers


def test_health_says_loading_until_the_models_are_ready(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import main

    settings = fake_settings(fake_root, monkeypatch)
    monkeypatch.setattr("adapters.wiring.build_encoder", lambda settings: HashingEncoder())
    monkeypatch.setattr("adapters.wiring.build_engine", lambda settings, progress=None: PacedEngine())
    release = threading.Event()
    real = main.serve_loader(settings)

    def slow(progress: Any) -> ChatSession:
        progress("loading the base model and adapters…")
        release.wait(30)
        return real(progress)  # type: ignore[no-any-return]

    server = start(slow, ServeOptions(port=0), lambda line: None)
    try:
        status, body, _ = request(server.url, "GET", "/health")
        assert status == 503 and body == {"status": "loading", "progress": "loading the base model and adapters…"}
        status, body, headers = request(server.url, "GET", "/v1/models")
        assert status == 503 and body["error"]["code"] == "loading" and int(headers["retry-after"]) > 0
        release.set()
        wait_ready(server.url)
        status, body, _ = request(server.url, "GET", "/health")
        assert body["status"] == "ready" and body["model"] == "paced-fake" and body["models"][0] == "auto"
    finally:
        release.set()
        server.stop()


def test_serve_exits_with_the_message_when_the_models_fail_to_load(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    def broken(settings: Any) -> Any:
        raise ModelUnavailable("the encoder folder is damaged", "run `python main.py prepare`")

    monkeypatch.setenv("XDG_CACHE_HOME", str(fake_root / "cache"))
    monkeypatch.setattr("adapters.wiring.build_encoder", broken)
    code = main.main(["serve", "--port", "0", "--config", str(fake_root / "config.toml")])
    err = capsys.readouterr().err
    assert code == 1
    assert "the encoder folder is damaged" in err and "main.py prepare" in err and "Traceback" not in err


def test_serve_refuses_other_addresses_without_a_key(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    monkeypatch.delenv("YIJIA_API_KEY", raising=False)
    config = ["--config", str(fake_root / "config.toml")]
    assert main.main(["serve", "--host", "0.0.0.0", *config]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without an API key" in err and "YIJIA_API_KEY" in err
    monkeypatch.setenv("YIJIA_API_KEY", " ")
    assert main.main(["serve", *config]) == 2
    assert "API key is empty" in capsys.readouterr().err


def test_serve_says_when_the_port_is_taken(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    monkeypatch.delenv("YIJIA_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main.main(["serve", "--port", str(port), "--config", str(fake_root / "config.toml")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_questions_are_logged_only_when_asked(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    with live_server(fake_settings(fake_root, monkeypatch), PacedEngine(), log, log_questions=True) as server:
        chat(server.url, ask_body("可以记下这个问题"))
    assert any("可以记下这个问题" in line for line in log)
