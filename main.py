"""Composition root: parse the command line, build settings -> encoder/router -> engine -> session, run a shell."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.offline import force_offline

# The app never waits on a network: the flags must be set before any hub library is imported.
force_offline()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from assistant.cli import build_parser  # noqa: E402
from assistant.config import Settings, load_settings  # noqa: E402
from assistant.engine import AdapterInfo, GenerationParams  # noqa: E402
from assistant.errors import USER_ERRORS, UsageError  # noqa: E402

#: Modules that add sub-commands: each has register(subparsers, add_common) and run(args, settings) -> int.
COMMAND_MODULES = ("training.commands", "assistant.eval_commands", "adapters.bench_command")


def log(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout is for answers."""
    print(message, end="" if message.endswith(("\r", "\n")) else "\n", file=sys.stderr, flush=True)


def settings_from(args: Any) -> Settings:
    """Settings file, then command-line overrides."""
    settings = load_settings(getattr(args, "config", None))
    return settings.with_overrides(
        base=getattr(args, "base", None),
        quantization="bf16" if getattr(args, "bf16", False) else None,
        device=getattr(args, "device", None),
        encoder=getattr(args, "encoder", None),
        adapters_dir=getattr(args, "adapters_dir", None),
        threads=getattr(args, "threads", None),
        max_new_tokens=getattr(args, "max_new_tokens", None),
        temperature=getattr(args, "temperature", None),
        system_prompt=getattr(args, "system", None),
    )


def installed_adapters(settings: Settings) -> list[AdapterInfo]:
    """Adapters on disk (manifest only; no torch)."""
    from adapters.registry import scan_adapters

    found, problems = scan_adapters(settings.adapters_dir)
    for problem in problems:
        log(f"warning: {problem}")
    return found


def build_encoder(settings: Settings) -> Any:
    """The router's sentence encoder (one shared choice; tests replace it with a fake)."""
    from adapters.encoder_choice import build_encoder as choose

    return choose(settings)


def routing_files(settings: Settings, adapters: list[AdapterInfo]) -> list[Path]:
    """The project's labelled data plus each installed adapter's own route examples."""
    from adapters.registry import route_example_files

    return list(settings.routing_data) + route_example_files(adapters)


def build_router(settings: Settings, adapters: list[AdapterInfo]) -> Any:
    """Encoder + the fitted classifier (refitted automatically when the data changes)."""
    from assistant.about_assistant import load_or_fit_detector
    from assistant.router import GENERAL, Router
    from assistant.router_fit import load_or_fit_router
    from data.labels import load_labelled

    encoder = build_encoder(settings)
    examples = load_labelled(routing_files(settings, adapters))
    fitted = load_or_fit_router(encoder, examples, log)
    about = load_or_fit_detector(encoder, examples, log=log)
    routes: dict[str, str | None] = {GENERAL: None}
    routes.update({a.route: a.name for a in adapters})
    return Router(encoder, fitted.stored, routes, about=about)


def build_engine(settings: Settings, progress: Callable[[str], None] = log) -> Any:
    """The shared base (4-bit by default) with every installed adapter attached."""
    from adapters.base_model import load_base
    from adapters.hf_engine import TransformersEngine
    from adapters.inference_tuning import tune_for_inference

    loaded = load_base(settings, progress=True)
    tune_for_inference(loaded.model, loaded.info, settings)
    return TransformersEngine(
        loaded.model,
        loaded.tokenizer,
        loaded.info,
        loaded.checksum,
        settings.adapters_dir,
        warn=lambda m: progress(f"warning: {m}"),
    )


def system_prompt(settings: Settings) -> str:
    from data.identity import load_identity

    return settings.system_prompt or load_identity().system_prompt()


def build_session(settings: Settings, keep_history: bool, sticky: bool, progress: Callable[[str], None] = log) -> Any:
    """Everything a shell needs, wired together."""
    from assistant.session import ChatSession

    progress("loading the router…")
    router = build_router(settings, installed_adapters(settings))
    progress("loading the base model and adapters…")
    engine = build_engine(settings, progress)
    params = GenerationParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
    from data.identity import load_identity

    return ChatSession(
        router,
        engine,
        params,
        system_prompt(settings),
        keep_history=keep_history,
        sticky=sticky,
        answer_prefix=load_identity().answer_prefix,
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
    from assistant.scripting import run_ask

    queries = stdin_queries(args)
    session = build_session(settings, keep_history=args.conversation, sticky=False)
    if args.adapter != "auto":
        session.set_override(args.adapter)
    return run_ask(session, queries, args.json, sys.stdout, sys.stderr)


def cmd_route(args: Any, settings: Settings) -> int:
    from assistant.scripting import run_route

    queries = stdin_queries(args)
    return run_route(build_router(settings, installed_adapters(settings)), queries, args.json, sys.stdout, sys.stderr)


def cmd_adapters(args: Any, settings: Settings) -> int:
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
        print(f"no adapters installed in {settings.adapters_dir}")
    else:
        for a in adapters:
            print(f"{a.name:<20} route={a.route:<16} {a.size_bytes / 1e6:6.1f} MB  {a.created}")
    return 0


def cmd_prepare(args: Any, settings: Settings) -> int:
    from adapters.base_model import prepare_models

    build_router(settings, installed_adapters(settings))
    prepare_models(settings)
    log("models ready")
    return 0


def cmd_chat(args: Any, settings: Settings) -> int:
    from assistant.tui import run_tui

    def factory(progress: Callable[[str], None]) -> Any:
        return build_session(settings, keep_history=True, sticky=True, progress=progress)

    return run_tui(factory, initial_adapter=getattr(args, "adapter", "auto"))


COMMANDS: dict[str, Callable[[Any, Settings], int]] = {
    "ask": cmd_ask,
    "route": cmd_route,
    "adapters": cmd_adapters,
    "prepare": cmd_prepare,
    "chat": cmd_chat,
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
