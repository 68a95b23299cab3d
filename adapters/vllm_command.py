"""`main.py vllm start|status|stop|load`: run the multi-LoRA vLLM server that `--engine vllm` talks to."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from adapters.vllm_launch import ALLOWED_RANKS
from assistant.config import Settings
from assistant.errors import UsageError

COMMANDS = ("vllm",)


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `vllm` and its actions to the main parser."""
    vllm = subparsers.add_parser("vllm", help="run the vLLM server that --engine vllm uses (multi-LoRA, scale-out)")
    actions = vllm.add_subparsers(dest="vllm_action", metavar="ACTION", required=True)

    start = actions.add_parser("start", help="start the server with every compatible adapter (or load new ones)")
    add_common(start)
    start.add_argument("--port", type=int, help="port on 127.0.0.1 (default: engine_url's, else a free one)")
    start.add_argument("--wait", type=float, default=900.0, help="seconds to wait for /health (default 900)")
    start.add_argument("--max-model-len", type=int, default=2048, help="context length served (default 2048)")
    start.add_argument("--kv-cache-gib", type=int, default=2, help="KV cache size on CPU, GiB (default 2)")
    start.add_argument(
        "--max-lora-rank", type=int, choices=ALLOWED_RANKS, help="highest adapter rank (default: adapters')"
    )
    start.add_argument("--tensor-parallel-size", type=int, help="GPUs per model (default: all that divide the heads)")

    status = actions.add_parser("status", help="is the server running, where, serving which models")
    add_common(status)
    status.add_argument("--json", action="store_true", help="one JSON object")

    stop = actions.add_parser("stop", help="stop the server and its workers")
    add_common(stop)

    load = actions.add_parser("load", help="load an installed adapter into the running server, without a restart")
    add_common(load)
    load.add_argument("name", help="the adapter's name (see `python main.py adapters`)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one `vllm` action; returns the exit code."""
    from adapters import vllm_server
    from adapters.wiring import log

    key = vllm_server.engine_api_key(settings)
    if args.vllm_action == "start":
        options = vllm_server.StartOptions(
            port=args.port,
            wait_s=args.wait,
            max_model_len=args.max_model_len,
            kv_cache_gib=args.kv_cache_gib,
            max_lora_rank=args.max_lora_rank,
            tensor_parallel=args.tensor_parallel_size,
        )
        state = vllm_server.start(settings, options, log, key)
        print(state.url)
        return 0
    if args.vllm_action == "status":
        return _print_status(vllm_server.status(key), args.json)
    if args.vllm_action == "stop":
        if not vllm_server.stop(log):
            log("no vLLM server was running")
        return 0
    return _load(args.name, settings, key)


def _print_status(report: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    elif not report["running"]:
        print("not running (start it with `python main.py vllm start`)")
    else:
        health = "healthy" if report.get("healthy") else "not answering /health yet"
        print(f"running at {report['url']} (pid {report['pid']}), {health}")
        if report.get("models"):
            print(f"models: {', '.join(report['models'])}")
        print(f"log: {report['log']}")
    return 0 if report["running"] else 1


def _load(name: str, settings: Settings, key: str | None) -> int:
    from adapters.vllm_server import base_checksum, load_adapter_live
    from adapters.wiring import installed_adapters, log

    found = {a.name: a for a in installed_adapters(settings)}
    if name not in found:
        raise UsageError(f"no installed adapter named {name!r}", f"installed: {', '.join(found) or 'none'}")
    load_adapter_live(name, found[name].path, settings.engine_url, key, base_checksum(settings))
    log(f"adapter {name!r} is live")
    return 0
