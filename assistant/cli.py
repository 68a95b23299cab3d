"""The command-line grammar (CLI.md): argparse only, so `--help` never loads a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from assistant.config import setting_help


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("models")
    g.add_argument("--config", type=Path, help="settings file (TOML); default ~/.config/yijia-assistant/config.toml")
    g.add_argument("--base", help=setting_help("base"))
    g.add_argument("--bf16", action="store_true", help="quantization = 'bf16': load the base without 4-bit NF4")
    g.add_argument("--device", help=setting_help("device"))
    g.add_argument("--encoder", help=setting_help("encoder"))
    g.add_argument(
        "--adapters-dir", type=Path, help="the one adapter store, searched and trained into (replaces adapter_dirs)"
    )
    g.add_argument("--threads", type=int, help=setting_help("threads"))
    g.add_argument("--engine", choices=("local", "vllm"), help=setting_help("engine"))
    g.add_argument("--engine-url", help=setting_help("engine_url"))


def _generation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default="auto", help="auto (default) | base | an adapter name: force a route")
    parser.add_argument("--max-new-tokens", type=int, help=setting_help("max_new_tokens"))
    parser.add_argument("--system", help=setting_help("system_prompt"))
    parser.add_argument("--temperature", type=float, help=setting_help("temperature"))


def _serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API (chat completions, models, route, health) for other apps",
        description="Serve the routed assistant over the OpenAI chat API: POST /v1/chat/completions (streaming "
        "or not), GET /v1/models, POST /v1/route, GET /health. See docs/CLI.md.",
    )
    _common(serve)
    serve.add_argument("--host", help=setting_help("serve_host"))
    serve.add_argument("--port", type=int, help=setting_help("serve_port"))
    serve.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on /v1/ (default: $YIJIA_API_KEY; the variable keeps it out of ps)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let browser pages from ORIGIN call the API (repeatable; default: no CORS)",
    )
    serve.add_argument("--queue", type=int, help=setting_help("serve_queue"))
    serve.add_argument("--max-body-mb", type=float, help=setting_help("serve_max_body_mb"))
    serve.add_argument("--max-tokens", type=int, help=setting_help("serve_max_tokens"))
    serve.add_argument("--log-questions", action="store_true", default=None, help=setting_help("serve_log_questions"))
    serve.add_argument("--max-new-tokens", type=int, help="answer length when a request gives no max_tokens")
    serve.add_argument("--temperature", type=float, help="temperature when a request gives none")


def build_parser(extra: list[tuple[str, object]] | None = None) -> argparse.ArgumentParser:
    """The full parser. `extra` lets training/eval/bench add their sub-commands without importing torch."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="上海颐家 assistant: routes each question to the right expert (a LoRA adapter) on one base model.",
        epilog="With no command: the chat TUI when stdin is a terminal, else `ask` over stdin.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser("chat", help="the chat TUI")
    _common(chat)
    chat.add_argument("--adapter", default="auto", help="auto | base | an adapter name")

    ask = sub.add_parser("ask", help="answer TEXT or every non-empty stdin line")
    _common(ask)
    _generation(ask)
    ask.add_argument("text", nargs="*", help="questions (default: read stdin)")
    ask.add_argument("--json", action="store_true", help="one JSON object per query (JSON Lines)")
    ask.add_argument("--conversation", action="store_true", help="stdin lines are turns of one conversation")

    route = sub.add_parser("route", help="routing only, no generation")
    _common(route)
    route.add_argument("text", nargs="*", help="questions (default: read stdin)")
    route.add_argument("--json", action="store_true", help="one JSON object per query")

    adapters = sub.add_parser("adapters", help="list the installed adapters")
    _common(adapters)
    adapters.add_argument("--json", action="store_true")

    prepare = sub.add_parser(
        "prepare", help="convert and cache the bundled models (run once; the other commands do it too)"
    )
    _common(prepare)

    _serve(sub)

    for _name, register in extra or []:
        register(sub, _common)  # type: ignore[operator]
    return parser
