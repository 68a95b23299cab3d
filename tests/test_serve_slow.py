"""`main.py serve` on the real bundled models (slow): the openai client gets answers; routes match `route --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from measurement.bench.serve_bench import ServeProcess
from tests.conftest import REPO

pytestmark = pytest.mark.slow

QUESTIONS = ["糖尿病患者的照护内容有哪些？", "你是谁", "梅西率迈阿密国际夺队史首冠", "How do I help my father sleep?"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("serve-slow") / "config.toml"
    config.write_text("max_new_tokens = 32\n", encoding="utf-8")
    server = ServeProcess(config, queue_size=4, log=lambda line: print(line, file=sys.stderr))
    try:
        address = server.url()
        server.wait_ready(address)
        yield address
    finally:
        server.stop()


def routes_from_the_cli() -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "main.py", "route", "--json", *QUESTIONS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_openai_client_gets_routed_answers_that_match_route_json(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=600)
    expected = routes_from_the_cli()
    for question, cli in zip(QUESTIONS, expected, strict=True):
        messages: list[Any] = [{"role": "user", "content": question}]
        whole = client.chat.completions.create(model="auto", messages=messages, max_tokens=24)
        route = (whole.model_extra or {})["route"]
        assert (route["route"], route["adapter"]) == (cli["route"], cli["adapter"]), question
        assert route["confidence"] == pytest.approx(cli["confidence"], abs=1e-3)
        assert whole.choices[0].message.content and whole.usage is not None and whole.usage.completion_tokens > 0
        stream = client.chat.completions.create(model="auto", messages=messages, max_tokens=24, stream=True)
        chunks: list[Any] = list(stream)
        assert (chunks[0].model_extra or {})["route"]["route"] == cli["route"]
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content  # greedy: the same answer either way
        if question == "你是谁":
            assert "颐家小助手" in streamed  # the identity holds behind the API too


def test_a_forced_adapter_and_the_model_list(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=600)
    models = [m.id for m in client.models.list()]
    assert models[:2] == ["auto", "base"] and "caregiving" in models
    raw = client.chat.completions.with_raw_response.create(
        model="caregiving", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=8
    )
    assert raw.headers["x-adapter"] == "caregiving" and raw.headers["x-route"] == "caregiving"
