"""Our local vLLM server: start it on loopback with the installed adapters, record it, report on it, stop it.

The record (a JSON state file under the user cache dir) is how `--engine vllm` finds the server
and how `vllm stop` finds the process group to end. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters.cache import atomic_write_bytes
from adapters.openai_http import ServerAddress, ServerRefused, parse_server_url, request_json, served_models
from adapters.process_group import free_port, group_alive, leader_runs, spawn, stop_group
from adapters.registry import scan_adapters
from adapters.vllm_base import base_checksum, base_model_folder
from adapters.vllm_launch import (
    ALLOWED_RANKS,
    LaunchOptions,
    ServedAdapter,
    adapter_problem,
    choose_adapters,
    launch_command,
    launch_env,
    tensor_parallel_size,
)
from adapters.vllm_venv import ensure_vllm_venv, gpu_count, vllm_home
from assistant.config import Settings
from assistant.errors import GenerationFailed, ModelUnavailable, UsageError

Log = Callable[[str], None]
#: The API key may come from the environment, so it never has to be written into a settings file.
API_KEY_ENV = "YIJIA_ENGINE_API_KEY"
STATE_FILE = "server.json"
LOG_FILE = "server.log"


@dataclass
class ServerState:
    """What `vllm start` recorded about the server it started."""

    pid: int
    url: str
    log: str
    model: str
    max_lora_rank: int
    adapters: list[str] = field(default_factory=list)
    started: float = 0.0


def engine_api_key(settings: Settings) -> str | None:
    """The key for the server: the settings' engine_api_key, else $YIJIA_ENGINE_API_KEY."""
    return settings.engine_api_key or os.environ.get(API_KEY_ENV) or None


def state_path() -> Path:
    return vllm_home() / STATE_FILE


def read_state(path: Path | None = None) -> ServerState | None:
    """The recorded server, or None when there is no (readable) record."""
    try:
        raw = json.loads((path or state_path()).read_text(encoding="utf-8"))
        return ServerState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def write_state(state: ServerState, path: Path | None = None) -> None:
    atomic_write_bytes(path or state_path(), json.dumps(asdict(state), indent=2).encode("utf-8"))


def clear_state(path: Path | None = None) -> None:
    (path or state_path()).unlink(missing_ok=True)


def running_state() -> ServerState | None:
    """The recorded server while any of its processes lives; a stale record is removed."""
    state = read_state()
    if state is None:
        return None
    if group_alive(state.pid) and leader_runs(state.pid, "vllm"):
        return state
    clear_state()
    return None


def recorded_url() -> str | None:
    """The URL of the server `vllm start` left running, if any (what `--engine vllm` uses by default)."""
    state = running_state()
    return state.url if state is not None else None


def healthy(address: ServerAddress, timeout: float = 2.0) -> bool:
    """True when the server's /health answers 200."""
    try:
        request_json(address, "GET", "/health", timeout=timeout)
    except GenerationFailed:
        return False
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class StartOptions:
    """`vllm start`'s knobs; None picks the default (a free port, GPUs' tensor parallel size, adapters' rank)."""

    port: int | None = None
    wait_s: float = 900.0
    max_model_len: int = 2048
    kv_cache_gib: int = 2
    max_lora_rank: int | None = None
    tensor_parallel: int | None = None


def wait_healthy(pid: int, address: ServerAddress, log_file: Path, timeout_s: float, log: Log) -> float:
    """Seconds until /health answered; ModelUnavailable with the log's tail if the server died or took too long."""
    started = time.monotonic()
    next_note = started + 15
    while True:
        if healthy(address):
            return time.monotonic() - started
        if not group_alive(pid):
            raise ModelUnavailable(
                f"the vLLM server exited while starting; the end of {log_file}:\n{log_tail(log_file)}",
                "fix what the log says, then run `python main.py vllm start` again",
            )
        now = time.monotonic()
        if now - started > timeout_s:
            raise ModelUnavailable(
                f"the vLLM server did not answer /health within {timeout_s:.0f} s; the end of {log_file}:\n"
                f"{log_tail(log_file)}",
                "a busy machine starts slowly: retry with a larger --wait",
            )
        if now >= next_note:
            log(f"[vllm] still starting ({now - started:.0f} s)…")
            next_note = now + 15
        time.sleep(0.5)


def load_adapter_live(
    name: str,
    path: str | Path,
    url: str | None = None,
    api_key: str | None = None,
    base_checksum: str | None = None,
) -> None:
    """Load adapter `name` from `path` into the running server (POST /v1/load_lora_adapter): no restart.

    Checked first like at start (and against `base_checksum` when given): an adapter vLLM would
    refuse, or one trained on another base, is a UsageError naming the reason.
    """
    state = running_state()
    target = url or (state.url if state is not None else None)
    if target is None:
        raise UsageError("no vLLM server is running", "start one with `python main.py vllm start`")
    limit = state.max_lora_rank if state is not None else ALLOWED_RANKS[-1]
    problem = adapter_problem(Path(path), base_checksum, limit)
    if problem:
        raise UsageError(f"adapter {name!r} cannot be served by the running vLLM server: {problem}")
    body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
    try:
        request_json(parse_server_url(target), "POST", "/v1/load_lora_adapter", body, api_key, timeout=120.0)
    except ServerRefused as exc:
        if "already" not in exc.message:  # loading twice is no error: the adapter is there
            raise
    if state is not None and state.url == target and name not in state.adapters:
        state.adapters.append(name)
        write_state(state)


def launch(
    python: Path, model: Path, adapters: list[ServedAdapter], rank: int, options: LaunchOptions, wait_s: float, log: Log
) -> ServerState:
    """Start the server, wait for /health, and record it; a start that fails leaves nothing running."""
    home = vllm_home()
    tmpdir, log_file = home / "tmp", home / LOG_FILE
    shutil.rmtree(tmpdir, ignore_errors=True)  # what an earlier server left there (no server runs now)
    tmpdir.mkdir(parents=True)
    argv = launch_command(python, model, adapters, rank, options)
    log_file.write_text(f"$ {' '.join(argv)}\n", encoding="utf-8")
    pid = spawn(argv, launch_env(dict(os.environ), tmpdir, options), log_file)
    url = f"http://{options.host}:{options.port}"
    state = ServerState(pid, url, str(log_file), str(model), rank, [a.name for a in adapters], time.time())
    write_state(state)  # recorded at once, so `vllm stop` can end a start that is still loading
    log(f"[vllm] starting on {url} (pid {pid}, log {log_file})…")
    try:
        seconds = wait_healthy(pid, parse_server_url(url), log_file, wait_s, log)
    except BaseException:
        stop_group(pid, log)
        clear_state()
        raise
    log(f"[vllm] ready in {seconds:.0f} s: base + {', '.join(state.adapters) or 'no adapters'}")
    return state


def load_missing(state: ServerState, wanted: list[ServedAdapter], log: Log, api_key: str | None = None) -> list[str]:
    """Load into the running server each wanted adapter it does not serve yet; the names loaded."""
    served = {m["id"] for m in served_models(parse_server_url(state.url), api_key)}
    loaded = []
    for adapter in wanted:
        if adapter.name in served:
            continue
        if adapter.rank > state.max_lora_rank:
            log(
                f"[vllm] adapter {adapter.name!r} left out: rank {adapter.rank} is over the running server's "
                f"limit {state.max_lora_rank} (`python main.py vllm stop`, then start again)"
            )
            continue
        load_adapter_live(adapter.name, adapter.path, state.url, api_key)
        log(f"[vllm] loaded adapter {adapter.name!r} into the running server")
        loaded.append(adapter.name)
    return loaded


def start(settings: Settings, options: StartOptions, log: Log, api_key: str | None = None) -> ServerState:
    """Serve the configured base and every compatible installed adapter; a running server only gets what it lacks."""
    found, problems = scan_adapters(settings.adapter_dirs)
    for problem in problems:
        log(f"warning: {problem}")
    served, skipped, rank = choose_adapters(found, base_checksum(settings), options.max_lora_rank)
    for left_out in skipped:
        log(f"[vllm] adapter {left_out.name!r} left out: {left_out.reason}")
    state = running_state()
    if state is not None:
        if not healthy(parse_server_url(state.url)):
            raise UsageError(
                f"a vLLM server (pid {state.pid}) is still starting or does not answer at {state.url}",
                f"wait and retry, or `python main.py vllm stop`; its log: {state.log}",
            )
        loaded = load_missing(state, served, log, api_key)
        log(f"[vllm] already running at {state.url}" + ("" if loaded else "; it serves every compatible adapter"))
        return read_state() or state  # the record now lists the adapters just loaded
    gpus = gpu_count()
    python = ensure_vllm_venv(log, gpus)
    model = base_model_folder(settings)
    launch_options = LaunchOptions(
        port=options.port or loopback_port(settings.engine_url) or free_port(),
        max_model_len=options.max_model_len,
        kv_cache_gib=options.kv_cache_gib,
        gpus=gpus,
        tensor_parallel=options.tensor_parallel or tensor_parallel_size(gpus, model / "config.json"),
    )
    return launch(python, model, served, rank, launch_options, options.wait_s, log)


def loopback_port(url: str | None) -> int | None:
    """The port of a configured engine_url on this machine: the server is started where the settings expect it."""
    if not url:
        return None
    address = parse_server_url(url)
    return address.port if address.host in ("127.0.0.1", "localhost") else None


def status(api_key: str | None = None) -> dict[str, Any]:
    """Whether the recorded server runs, where, and which models it serves."""
    state = running_state()
    if state is None:
        return {"running": False}
    report: dict[str, Any] = {"running": True, "pid": state.pid, "url": state.url, "log": state.log}
    address = parse_server_url(state.url)
    report["healthy"] = healthy(address)
    if report["healthy"]:
        report["models"] = [m["id"] for m in served_models(address, api_key)]
    return report


def stop(log: Log) -> bool:
    """End the recorded server and every process of its group; False when none was running."""
    state = running_state()
    if state is None:
        return False
    log(f"[vllm] stopping the server (pid {state.pid})…")
    stop_group(state.pid, log)
    clear_state()
    return True
