"""Composition root: parse the command line, build settings -> encoder/router -> engine -> session, run a shell."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from adapters.offline import force_offline

# The app never waits on a network: the flags must be set before any hub library is imported.
force_offline()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from assistant.cli import build_parser  # noqa: E402
from assistant.config import Settings, load_settings  # noqa: E402
from assistant.errors import USER_ERRORS, UsageError  # noqa: E402

#: Modules that add sub-commands: each has register(subparsers, add_common) and run(args, settings) -> int.
COMMAND_MODULES = (
    "training.commands",
    "measurement.eval_commands",
    "measurement.bench_command",
    "adapters.vllm_command",
)


def log(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout is for answers."""
    from adapters.wiring import log as to_stderr

    to_stderr(message)


def settings_from(args: Any) -> Settings:
    """Settings file, then command-line overrides."""
    settings = load_settings(getattr(args, "config", None))
    return settings.with_overrides(
        base=getattr(args, "base", None),
        quantization="bf16" if getattr(args, "bf16", False) else None,
        device=getattr(args, "device", None),
        encoder=getattr(args, "encoder", None),
        # An explicit --adapters-dir is the one store searched and trained into.
        adapter_dirs=(args.adapters_dir,) if getattr(args, "adapters_dir", None) else None,
        threads=getattr(args, "threads", None),
        max_new_tokens=getattr(args, "max_new_tokens", None),
        temperature=getattr(args, "temperature", None),
        system_prompt=getattr(args, "system", None),
        engine=getattr(args, "engine", None),
        engine_url=getattr(args, "engine_url", None),
    )


def stdin_queries(args: Any) -> Any:
    from assistant.scripting import queries_from_args, queries_from_stream

    if args.text:
        return queries_from_args(args.text)
    if sys.stdin.isatty():
        raise UsageError(
            "no question given", "pass TEXT, or pipe questions on stdin: cat questions.txt | python main.py ask"
        )
    return queries_from_stream(sys.stdin.buffer)


def cmd_ask(args: Any, settings: Settings) -> int:
    from adapters.wiring import build_session
    from assistant.scripting import run_ask

    queries = stdin_queries(args)
    session = build_session(settings, keep_history=args.conversation, sticky=False)
    if args.adapter != "auto":
        session.set_override(args.adapter)
    return run_ask(session, queries, args.json, sys.stdout, sys.stderr)


def cmd_route(args: Any, settings: Settings) -> int:
    from adapters.wiring import build_router
    from assistant.scripting import run_route

    queries = stdin_queries(args)
    return run_route(build_router(settings), queries, args.json, sys.stdout, sys.stderr)


def cmd_adapters(args: Any, settings: Settings) -> int:
    from adapters.wiring import installed_adapters

    adapters = installed_adapters(settings)
    if args.json:
        for a in adapters:
            print(
                json.dumps(
                    {
                        "name": a.name,
                        "route": a.route,
                        "path": a.path,
                        "base_model": a.base_model,
                        "created": a.created,
                        "size_bytes": a.size_bytes,
                        "metrics": a.metrics,
                    },
                    ensure_ascii=False,
                )
            )
    elif not adapters:
        print(f"no adapters installed in {', '.join(map(str, settings.adapter_dirs))}")
    else:
        for a in adapters:
            print(f"{a.name:<20} route={a.route:<16} {a.size_bytes / 1e6:6.1f} MB  {a.created}")
    return 0


def cmd_prepare(args: Any, settings: Settings) -> int:
    from adapters.base_model import prepare_models
    from adapters.wiring import build_router

    build_router(settings)
    prepare_models(settings)
    log("models ready")
    return 0


def cmd_chat(args: Any, settings: Settings) -> int:
    from adapters.wiring import build_session
    from assistant.tui import run_tui

    def factory(progress: Callable[[str], None]) -> Any:
        return build_session(settings, keep_history=True, sticky=True, progress=progress)

    return run_tui(factory, initial_adapter=getattr(args, "adapter", "auto"))


def serve_loader(settings: Settings) -> Callable[[Callable[[str], None]], Any]:
    """The models behind `serve`: one router, one engine and one answer policy, shared by every request's session."""

    def load(progress: Callable[[str], None]) -> Any:
        from adapters.wiring import build_encoder, build_engine, build_router, build_session
        from assistant.server import SerialEncoder

        # A /v1/route request may encode while another request's answer is being prepared.
        encoder = SerialEncoder(build_encoder(settings))
        progress("loading the router…")
        router = build_router(settings, progress=progress, encoder=encoder)
        progress("loading the base model and adapters…")
        engine = build_engine(settings, progress)
        session = build_session(
            settings, keep_history=True, sticky=False, progress=progress, router=router, engine=engine
        )
        progress("ready")
        return session

    return load


def cmd_serve(args: Any, settings: Settings) -> int:
    from assistant.server import ServeOptions, serve

    settings = settings.with_overrides(
        serve_host=args.host,
        serve_port=args.port,
        serve_queue=args.queue,
        serve_max_body_mb=args.max_body_mb,
        serve_max_tokens=args.max_tokens,
        serve_log_questions=args.log_questions,
    )
    options = ServeOptions.from_settings(settings, api_key=args.api_key, cors_origins=args.cors_origin or ())
    return serve(serve_loader(settings), options, log)


COMMANDS: dict[str, Callable[[Any, Settings], int]] = {
    "ask": cmd_ask,
    "route": cmd_route,
    "adapters": cmd_adapters,
    "prepare": cmd_prepare,
    "chat": cmd_chat,
    "serve": cmd_serve,
}


def command_modules() -> list[Any]:
    """The optional command modules that exist in this checkout."""
    found = []
    for name in COMMAND_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    modules = command_modules()
    parser = build_parser([(m.__name__, m.register) for m in modules])
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["chat" if sys.stdin.isatty() else "ask", *argv]
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        handler = COMMANDS.get(args.command)
        if handler is not None:
            return handler(args, settings)
        for module in modules:
            if args.command in getattr(module, "COMMANDS", ()):
                return int(module.run(args, settings))
        parser.print_help()
        return 2
    except USER_ERRORS as exc:
        log(f"error: {exc}")
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
