"""The vLLM part of the bench: `serve` on the local engine and on a vLLM server, side by side, at 1, 4 and 8 clients."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assistant.config import Settings
from assistant.errors import AssistantError
from measurement.bench.machine import load_average
from measurement.bench.serve_bench import CLIENT_LEVELS, QUESTIONS, measure_levels, running_serve, stream_request
from measurement.bench.stats import median, ratio

Log = Callable[[str], None]
#: The two engines `serve` answers with, in the order of the first step (later steps alternate).
ENGINES = ("local", "vllm")
#: Tokens per answer, the same for both engines: long enough that decoding, not prefill, sets tok/s.
ANSWER_TOKENS = 64
#: Single-stream answers per engine, one after another; QUESTIONS alternate routes, so both are covered.
SINGLE_STREAM_REQUESTS = 4
#: Requests per client level (at least one per client).
REQUESTS_PER_LEVEL = 8


@dataclass(frozen=True)
class VllmServer:
    """The vLLM server measured: where, which build, and whether this bench started it (and so stops it)."""

    url: str
    started_by_bench: bool
    version: str | None = None
    dtype: str | None = None
    start_s: float | None = None


#: (settings, log) -> the vLLM server to measure; raises AssistantError/OSError when none can be had.
EnsureServer = Callable[[Settings, Log], VllmServer]
#: (settings, queue size, log) -> a running `serve` for the block: (URL, seconds until ready).
ServeRunner = Callable[[Settings, int, Log], AbstractContextManager[tuple[str, float]]]


def server_version(url: str, api_key: str | None = None) -> str | None:
    """vLLM's version from its GET /version, or None when the server does not say."""
    from adapters.openai_http import parse_server_url, request_json
    from assistant.errors import GenerationFailed

    try:
        answer = request_json(parse_server_url(url), "GET", "/version", api_key=api_key)
    except GenerationFailed:
        return None
    return str(answer["version"]) if isinstance(answer, dict) and answer.get("version") else None


def launch_dtype(log_file: str | Path) -> str | None:
    """The --dtype the server was launched with: the first line of its log is its command."""
    try:
        with open(log_file, encoding="utf-8", errors="replace") as handle:
            command = handle.readline()
    except OSError:
        return None
    found = re.search(r"--dtype\s+(\S+)", command)
    return found.group(1) if found else None


def ensure_vllm(settings: Settings, log: Log) -> VllmServer:
    """The server `main.py vllm start` gives: the recorded one when it runs (left running), else a new one."""
    from adapters import vllm_server

    key = vllm_server.engine_api_key(settings)
    already = vllm_server.running_state() is not None
    began = time.perf_counter()
    state = vllm_server.start(settings, vllm_server.StartOptions(), log, key)
    if already:
        log(f"[bench] vllm: reusing the server already running at {state.url} (it is left running)")
    return VllmServer(
        url=state.url,
        started_by_bench=not already,
        version=server_version(state.url, key),
        dtype=launch_dtype(state.log),
        start_s=None if already else time.perf_counter() - began,
    )


def stop_vllm(log: Log) -> None:
    """Stop the recorded server (only called for one this bench started)."""
    from adapters import vllm_server

    vllm_server.stop(log)


def single_stream(url: str, requests: int, max_tokens: int) -> dict[str, Any]:
    """One client, whole streamed answers one after another: tokens / wall time of each, and their median."""
    results = [stream_request(url, QUESTIONS[i % len(QUESTIONS)], max_tokens) for i in range(requests)]
    ok = [r for r in results if r["status"] == 200 and r["latency_ms"] > 0]
    rates = [r["tokens"] / (r["latency_ms"] / 1000.0) for r in ok]
    return {
        "requests": len(results),
        "ok": len(ok),
        "tok_s": median(rates),
        "tok_s_each": rates,
        "tokens_each": [r["tokens"] for r in ok],
    }


def warm_up(url: str, max_tokens: int) -> float:
    """One unmeasured answer per route (vLLM's first answer on an adapter includes its warm-up); seconds taken."""
    began = time.perf_counter()
    for question in QUESTIONS[:2]:  # a caregiving question, then an everyday one
        stream_request(url, question, max_tokens)
    return time.perf_counter() - began


def step_order(step: int) -> tuple[str, ...]:
    """Which engine goes first at each step: alternated, so a slow drift in the load hits both alike."""
    return ENGINES if step % 2 == 0 else ENGINES[::-1]


def compare(
    urls: dict[str, str],
    levels: Sequence[int],
    requests_per_level: int,
    single_requests: int,
    max_tokens: int,
    log: Log,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Both engines, step by step (single stream, then each level), alternating; (per engine, load per step)."""
    measured: dict[str, dict[str, Any]] = {name: {"levels": []} for name in urls}
    for name, url in urls.items():
        log(f"[bench] vllm part: warming up engine {name}...")
        measured[name]["warm_up_s"] = warm_up(url, max_tokens)
    steps: list[dict[str, Any]] = []
    for number, what in enumerate(["single stream", *(f"{c} client{'s' if c > 1 else ''}" for c in levels)]):
        for name in step_order(number):
            before = load_average()
            log(f"[bench] vllm part: {what}, engine {name}...")
            if number == 0:
                measured[name]["single_stream"] = single_stream(urls[name], single_requests, max_tokens)
            else:
                clients = levels[number - 1]
                measured[name]["levels"] += measure_levels(urls[name], (clients,), requests_per_level, max_tokens, log)
            steps.append({"engine": name, "step": what, "load_before": before, "load_after": load_average()})
    for name, engine in measured.items():
        own = [s for s in steps if s["engine"] == name]
        engine["load_average"] = {"before": own[0]["load_before"], "after": own[-1]["load_after"]}
    return measured, steps


def vllm_vs_local(local: dict[str, Any], vllm: dict[str, Any]) -> dict[str, Any]:
    """vLLM / local for single-stream tok/s, and per client level for combined tok/s and p50 latency."""
    by_clients = {level["clients"]: level for level in local["levels"]}
    pairs = [(by_clients[v["clients"]], v) for v in vllm["levels"] if v["clients"] in by_clients]
    return {
        "single_stream_tok_s": ratio(vllm["single_stream"]["tok_s"], local["single_stream"]["tok_s"]),
        "tok_s_by_clients": {str(v["clients"]): ratio(v["tokens_per_s"], lo["tokens_per_s"]) for lo, v in pairs},
        "latency_ms_p50_by_clients": {
            str(v["clients"]): ratio(v["latency_ms_p50"], lo["latency_ms_p50"]) for lo, v in pairs
        },
    }


def vllm_part(
    settings: Settings,
    log: Log,
    levels: Sequence[int] = CLIENT_LEVELS,
    requests_per_level: int = REQUESTS_PER_LEVEL,
    single_requests: int = SINGLE_STREAM_REQUESTS,
    max_tokens: int = ANSWER_TOKENS,
    ensure: EnsureServer = ensure_vllm,
    stop: Callable[[Log], None] = stop_vllm,
    serve: ServeRunner = running_serve,
) -> dict[str, Any]:
    """vLLM (started or reused), `serve` on each engine at once, every step alternated; {"skipped": why} on failure."""
    load = {"start": load_average()}
    try:
        server = ensure(settings, log)
    except (AssistantError, OSError) as exc:
        reason = getattr(exc, "message", None) or str(exc)
        log(f"[bench] vllm part skipped: {reason}")
        return {"skipped": f"vLLM could not be set up: {reason}"}
    load["after_vllm_start"] = load_average()
    local_settings = settings.with_overrides(engine="local")
    served_settings = settings.with_overrides(engine="vllm", engine_url=server.url)
    try:
        with ExitStack() as running:
            local_url, local_ready = running.enter_context(serve(local_settings, max(levels), log))
            vllm_url, vllm_ready = running.enter_context(serve(served_settings, max(levels), log))
            urls = {"local": local_url, "vllm": vllm_url}
            engines, steps = compare(urls, levels, requests_per_level, single_requests, max_tokens, log)
    except (RuntimeError, OSError, ValueError, http.client.HTTPException) as exc:
        log(f"[bench] vllm part failed: {exc}")
        return {"skipped": f"serve failed: {exc}", "vllm_server": asdict(server)}
    finally:
        if server.started_by_bench:
            stop(log)
    load["end"] = load_average()
    engines["local"].update(ready_s=local_ready, dtype=settings.quantization)
    engines["vllm"].update(ready_s=vllm_ready, dtype=server.dtype, version=server.version)
    return {
        "engines": engines,
        "vllm_server": asdict(server),
        "vllm_vs_local": vllm_vs_local(engines["local"], engines["vllm"]),
        "levels": list(levels),
        "answer_tokens": max_tokens,
        "single_stream_requests": single_requests,
        "requests_per_level": requests_per_level,
        "load_average": load,
        "steps": steps,
        "method": "`main.py serve` on loopback twice at once (engine local, engine vllm), the same questions "
        f"({len(QUESTIONS)}, both routes), {max_tokens}-token answers, greedy; single stream = one client, "
        "tokens / wall time of each whole streamed answer, median; combined = completion tokens / wall time "
        "across N concurrent clients; the engines alternate step by step, after one unmeasured answer per route",
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m measurement.bench.vllm_part`: only this part, on the user's settings."""
    from assistant.config import load_settings
    from measurement.bench.report_vllm import markdown_rows

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, help="settings file (default: the user's)")
    parser.add_argument("--requests", type=int, default=REQUESTS_PER_LEVEL, help="requests per client level")
    parser.add_argument("--single", type=int, default=SINGLE_STREAM_REQUESTS, help="single-stream requests")
    parser.add_argument("--max-tokens", type=int, default=ANSWER_TOKENS, help="tokens per answer")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    settings = load_settings(args.config)
    part = vllm_part(settings, log, CLIENT_LEVELS, args.requests, args.single, args.max_tokens)
    text = json.dumps(part, ensure_ascii=False, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    log("\n".join(markdown_rows(part)))
    return 0 if "skipped" not in part else 1


if __name__ == "__main__":
    sys.exit(main())
