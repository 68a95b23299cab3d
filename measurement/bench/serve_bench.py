"""The serve part of the bench: a live `main.py serve` on loopback, latency and queue wait at 1, 4 and 8 clients."""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from assistant.config import REPO_ROOT, Settings
from measurement.bench.stats import median, p95
from measurement.bench.worker import settings_to_json

#: Concurrent clients measured, each level after the last. 8 at the top: it fills every slot `serve` gives a
#: vLLM server (SERVER_ENGINE_SLOTS), so the local and vLLM engines are compared at the same levels by one
#: code path; the queue's behaviour when full is covered by the serve tests rather than timed here.
CLIENT_LEVELS = (1, 4, 8)
#: Tokens per answer: short, so the 8-client level ends in minutes on a CPU.
ANSWER_TOKENS = 32
#: Requests per level (at least one per client).
REQUESTS_PER_LEVEL = 8
#: Caregiving and everyday questions, so both routes (adapter and base) are served.
QUESTIONS = (
    "糖尿病患者的照护内容有哪些？",
    "今天晚饭吃什么好？",
    "卧床老人怎么翻身防压疮？",
    "给我讲个笑话",
    "老人晚上睡不好怎么办？",
    "How do I help my mother walk safely at home?",
    "推荐一部适合全家看的电影",
    "阿尔茨海默病老人反复问同一个问题怎么照护？",
)
READY_TIMEOUT_S = 1800.0


def stream_request(url: str, question: str, max_tokens: int) -> dict[str, Any]:
    """One streamed request: status, total and first-text milliseconds, the server's queue wait, tokens.

    First text is the first chunk with content: the answer guard lets text out a sentence at a time.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=READY_TIMEOUT_S)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        queue_ms = float(response.getheader("x-queue-ms") or 0)
        if response.status != 200:
            response.read()
            return {"status": response.status}
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    finally:
        conn.close()
    done = time.perf_counter()
    return {
        "status": 200,
        "latency_ms": (done - started) * 1000.0,
        "first_text_ms": ((first or done) - started) * 1000.0,
        "queue_ms": queue_ms,
        "tokens": tokens,
    }


def _run_level(url: str, clients: int, rounds: int, max_tokens: int) -> tuple[list[dict[str, Any]], float]:
    """`clients` threads start together, each sending `rounds` requests one after another; (results, wall s)."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(number: int) -> None:
        start.wait()
        for i in range(rounds):
            result = stream_request(url, QUESTIONS[(number + i * clients) % len(QUESTIONS)], max_tokens)
            with lock:
                results.append(result)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - began


def measure_levels(
    url: str,
    levels: Sequence[int] = CLIENT_LEVELS,
    requests_per_level: int = REQUESTS_PER_LEVEL,
    max_tokens: int = ANSWER_TOKENS,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Latency, first token, queue wait and throughput at each level of concurrent clients."""
    out = []
    for clients in levels:
        rounds = max(1, math.ceil(requests_per_level / clients))
        log(f"[bench] serve: {clients} client(s) x {rounds} request(s), {max_tokens} tokens each...")
        results, wall = _run_level(url, clients, rounds, max_tokens)
        ok = [r for r in results if r["status"] == 200]
        out.append(
            {
                "clients": clients,
                "requests": len(results),
                "ok": len(ok),
                "refused": sum(1 for r in results if r["status"] == 503),
                "latency_ms_p50": median([r["latency_ms"] for r in ok]),
                "latency_ms_p95": p95([r["latency_ms"] for r in ok]),
                "first_text_ms_p50": median([r["first_text_ms"] for r in ok]),
                "queue_ms_p50": median([r["queue_ms"] for r in ok]),
                "queue_ms_p95": p95([r["queue_ms"] for r in ok]),
                "answers_per_s": len(ok) / wall if wall else 0.0,
                "tokens_per_s": sum(r["tokens"] for r in ok) / wall if wall else 0.0,
            }
        )
    return out


def _toml(settings: Settings) -> str:
    """The settings as a settings file (JSON strings are valid TOML basic strings)."""
    lines = []
    for name, value in settings_to_json(settings).items():
        if value is not None:
            lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class ServeProcess:
    """`main.py serve` on a free loopback port; its stderr is passed on, its address read from its first line."""

    def __init__(self, config: Path, queue_size: int, log: Callable[[str], None]) -> None:
        command = [sys.executable, "main.py", "serve", "--config", str(config), "--port", "0"]
        command += ["--queue", str(queue_size), "--host", "127.0.0.1"]
        env = {k: v for k, v in os.environ.items() if k != "YIJIA_API_KEY"}
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log = log
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.strip() and not line.startswith("[serve] "):  # progress yes, the per-request lines no
                self._log(f"[bench] serve: {line.rstrip()}")
            self._lines.put(line)
        self._lines.put(None)

    def url(self, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"serve exited with code {self.process.wait()} before listening")
            if line.startswith("serving on "):
                return line.split()[2]
        raise RuntimeError("serve did not start listening")

    def wait_ready(self, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with code {self.process.returncode} while loading")
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass  # not answering yet
            finally:
                conn.close()
            time.sleep(0.5)
        raise RuntimeError("serve did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running_serve(settings: Settings, queue_size: int, log: Callable[[str], None]) -> Iterator[tuple[str, float]]:
    """`main.py serve` with these settings on loopback until the block ends: (its URL, seconds until ready)."""
    with tempfile.TemporaryDirectory(prefix="yijia-serve-bench-") as folder:
        config = Path(folder) / "config.toml"
        config.write_text(_toml(settings), encoding="utf-8")
        log(f"[bench] serve: starting `main.py serve` on loopback, engine {settings.engine} (subprocess)...")
        started = time.perf_counter()
        server = ServeProcess(config, queue_size, log)
        try:
            url = server.url()
            server.wait_ready(url)
            yield url, time.perf_counter() - started
        finally:
            server.stop()


def serve_part(
    settings: Settings,
    log: Callable[[str], None],
    levels: Sequence[int] = CLIENT_LEVELS,
    requests_per_level: int = REQUESTS_PER_LEVEL,
    max_tokens: int = ANSWER_TOKENS,
) -> dict[str, Any]:
    """Start `serve` with these settings, measure every level, stop it; a failure becomes {"skipped": why}."""
    try:
        with running_serve(settings, max(levels), log) as (url, ready_s):
            result = measure_levels(url, levels, requests_per_level, max_tokens, log)
    except (RuntimeError, OSError) as exc:
        log(f"[bench] serve part failed: {exc}")
        return {"skipped": f"serve failed: {exc}"}
    return {
        "levels": result,
        "answer_tokens": max_tokens,
        "ready_s": ready_s,
        "method": "streamed chat completions (model auto) from N concurrent loopback clients, "
        f"{len(QUESTIONS)} questions in turn; queue wait is the server's own x-queue-ms",
    }


def markdown_rows(part: dict[str, Any]) -> list[str]:
    """The serve section of the bench report."""
    if "skipped" in part:
        return ["## Serving (`serve`, concurrent clients)", "", f"skipped: {part['skipped']}", ""]
    rows = [
        f"## Serving (`serve`, concurrent clients, {part['answer_tokens']}-token answers)",
        "",
        "| clients | requests | 503 | latency p50 | latency p95 | first text p50 | queue wait p50 | queue wait p95 "
        "| answers/s | tokens/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in part["levels"]:
        rows.append(
            f"| {level['clients']} | {level['requests']} | {level['refused']} | "
            f"{level['latency_ms_p50'] / 1000:.1f} s | {level['latency_ms_p95'] / 1000:.1f} s | "
            f"{level['first_text_ms_p50'] / 1000:.1f} s | {level['queue_ms_p50'] / 1000:.1f} s | "
            f"{level['queue_ms_p95'] / 1000:.1f} s | {level['answers_per_s']:.2f} | {level['tokens_per_s']:.1f} |"
        )
    rows += [
        "",
        f"Method: {part['method']}. First text is the first streamed sentence (the answer guard releases whole "
        f"sentences). Models ready {part['ready_s']:.0f} s after start.",
        "",
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m measurement.bench.serve_bench`: only this part, on the user's settings."""
    from assistant.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, help="settings file (default: the user's)")
    parser.add_argument("--requests", type=int, default=REQUESTS_PER_LEVEL, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=ANSWER_TOKENS, help="tokens per answer")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    part = serve_part(load_settings(args.config), log, CLIENT_LEVELS, args.requests, args.max_tokens)
    print(json.dumps(part, ensure_ascii=False))
    log("\n".join(markdown_rows(part)))
    return 0 if "skipped" not in part else 1


if __name__ == "__main__":
    sys.exit(main())
