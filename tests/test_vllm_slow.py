"""vLLM end to end (slow): `vllm start` with the shipped adapter, `ask --engine vllm` vs local bf16, live load, stop.

On 2 busy cores: vLLM's venv ~90 s+ once (kept in the user cache), the server start 40-130 s,
the local bf16 `ask` a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters import vllm_server
from adapters.process_group import group_alive
from tests.conftest import REPO

pytestmark = pytest.mark.slow

QUESTIONS = ["糖尿病患者的照护内容有哪些？", "你是谁", "梅西率迈阿密国际夺队史首冠"]
PARITY_TOKENS = 32


def run_main(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        check=False,
    )


def vllm_processes() -> list[int]:
    """Processes started from vLLM's venv (the API server and its workers)."""
    from adapters.vllm_venv import venv_dir

    marker = str(venv_dir()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def ask_json(*flags: str) -> list[dict[str, object]]:
    """`ask --json` over QUESTIONS, greedy, PARITY_TOKENS long, through the engine the flags choose."""
    done = run_main("ask", "--json", "--max-new-tokens", str(PARITY_TOKENS), *flags, *QUESTIONS)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def install_copy(name: str) -> None:
    """The shipped adapter again, as a user-trained one with its own name and route (for a live load)."""
    from adapters.registry import read_manifest, write_manifest
    from assistant.config import SHIPPED_ADAPTERS, user_adapters_dir

    target = user_adapters_dir() / name
    shutil.copytree(SHIPPED_ADAPTERS / "caregiving", target)
    write_manifest(target, **{**read_manifest(target), "name": name, "route": name})


def test_vllm_answers_like_the_local_engine_and_takes_new_adapters_live() -> None:
    if vllm_server.running_state() is not None:
        pytest.skip("a vLLM server is already running: stop it with `python main.py vllm stop` first")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        result = run_main("vllm", "start")
        timings["venv + start"] = time.perf_counter() - started
        assert result.returncode == 0, result.stderr[-3000:]
        state = vllm_server.read_state()
        assert state is not None and state.adapters == ["caregiving"]
        assert result.stdout.strip() == state.url

        begun = time.perf_counter()
        served = ask_json("--engine", "vllm")
        timings["ask x3 on vLLM"] = time.perf_counter() - begun
        local = ask_json("--bf16")  # vLLM serves bf16 weights: compared with the local engine in bf16
        # The router stays in our process: the same routes whichever engine answers.
        assert [r["route"] for r in served] == [r["route"] for r in local] == ["caregiving", "caregiving", "general"]
        assert all(str(r["answer"]).strip() and int(str(r["new_tokens"])) > 0 for r in served)
        # Greedy and the same repetition penalty: the same first tokens, answer prefixes included.
        for on_vllm, in_process in zip(served, local, strict=True):
            assert on_vllm["answer"] == in_process["answer"], (on_vllm, in_process)

        install_copy("caregiving-copy")
        begun = time.perf_counter()
        loaded = run_main("vllm", "load", "caregiving-copy")
        timings["live load"] = time.perf_counter() - begun
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        status = json.loads(run_main("vllm", "status", "--json").stdout)
        assert status["models"] == ["base", "caregiving", "caregiving-copy"]
    finally:
        pid = (vllm_server.read_state() or vllm_server.ServerState(0, "", "", "", 0)).pid
        stopped = run_main("vllm", "stop")
        print(f"\nvLLM timings (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert not group_alive(pid) and vllm_processes() == []
    assert vllm_server.read_state() is None
