"""`eval compare`: the same questions answered as `ask` answers them, by the base and by each adapter store given.

For side-by-side samples after a retrain: `--store old=DIR --store new=DIR` answers each question on
the base route once and on ROUTE once per store, through the full session path (rules, knowledge,
guard), and writes Markdown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.errors import UsageError
from data.files import read_json_objects


def register_compare(eval_subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `eval compare` (no torch import here)."""
    parser = eval_subparsers.add_parser(
        "compare",
        help="answers side by side: the base and each adapter store given, as `ask` answers",
        description='Answer every question of FILE (JSON Lines with "question", or "prompt") on the general '
        "route and, for each --store LABEL=DIR, on --route with that store's adapter; write Markdown.",
    )
    add_common(parser)
    parser.add_argument("file", type=Path, help='JSON Lines with "question" (or "prompt") per line')
    parser.add_argument("--route", default="caregiving", help="the adapter route to compare (default caregiving)")
    parser.add_argument("--store", action="append", default=[], metavar="LABEL=DIR", help="an adapter store")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions (0 = all)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="answer length (default 200)")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: stdout)")


def _questions(path: Path, limit: int) -> list[str]:
    out = []
    for number, obj in read_json_objects(path):
        text = obj.get("question") or obj.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f'{path}:{number}: no "question" or "prompt"')
        out.append(text.strip())
    return out[: limit or None]


def _answer(session: Any, question: str) -> tuple[str, list[str]]:
    from assistant.session import Done, Failed, Token

    pieces, sources = [], []
    for event in session.ask(question):
        if isinstance(event, Token):
            pieces.append(event.text)
        elif isinstance(event, Done):
            sources = [p.entry.id for p in event.sources]
        elif isinstance(event, Failed):
            pieces.append(f"[failed: {event.error}]")
    return "".join(pieces).strip(), sources


def run_compare(args: Any, settings: Any) -> int:
    """Answer on the base once, then on the route once per store; Markdown out."""
    from adapters.wiring import build_engine, build_router, build_session

    stores = [tuple(s.split("=", 1)) for s in args.store]
    if not stores or any(len(s) != 2 for s in stores):
        raise UsageError("give at least one --store LABEL=DIR")
    questions = _questions(args.file, args.limit)
    columns: list[tuple[str, list[tuple[str, list[str]]]]] = []
    base_done = False
    for label, folder in stores:
        variant = settings.with_overrides(adapter_dirs=(Path(folder),), max_new_tokens=args.max_new_tokens)
        router = build_router(variant)
        session = build_session(variant, False, False, router=router, engine=build_engine(variant))
        runs = [("base", "base")] if not base_done else []
        runs.append((f"{label} ({args.route})", args.route))
        for name, route in runs:
            adapters = {a.route: a.name for a in session.engine.adapters()}
            if route != "base" and route not in adapters:
                raise UsageError(f"store {folder} has no adapter for route {route!r}")
            session.set_override("base" if route == "base" else adapters[route])
            answers = []
            for i, question in enumerate(questions, start=1):
                answers.append(_answer(session, question))
                print(f"\r[compare] {name}: {i}/{len(questions)}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            columns.append((name, answers))
        base_done = True
        del session, router
    text = markdown(questions, columns)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


def markdown(questions: list[str], columns: list[tuple[str, list[tuple[str, list[str]]]]]) -> str:
    """Each question, then each column's answer and the knowledge entries it was given."""
    lines = ["# Side by side, as `ask` answers", ""]
    for i, question in enumerate(questions):
        lines += [f"## {i + 1}. {question}", ""]
        for name, answers in columns:
            answer, sources = answers[i]
            lines += [f"**{name}**" + (f" — sources: {', '.join(sources)}" if sources else ""), "", answer, ""]
    return "\n".join(lines)
