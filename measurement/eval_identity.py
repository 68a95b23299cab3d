"""`eval identity`: the identity probe on every route, answered through the product's own engine as `ask` answers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.identity_probe import (
    GENERAL,
    PROBE_FILE,
    AnswerFn,
    ProbeQuestion,
    format_results,
    load_probe,
    run_probe,
    summary,
)


def register_identity_eval(eval_subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `eval identity` to the eval group (no torch import here)."""
    parser = eval_subparsers.add_parser(
        "identity",
        help="identity probe: does every route answer as 颐家小助手 / Yijia Assistant?",
        description="Ask the fixed identity questions (data/identity_probe.jsonl) on the general route (base + "
        "identity system prompt) and on every installed adapter's route, answered as `ask` answers them: a question "
        "the router recognises as about the assistant starts in character. Exit 1 when a route is below --require.",
    )
    add_common(parser)
    parser.add_argument("--probe", type=Path, default=PROBE_FILE, help="probe questions (JSONL: question, lang)")
    parser.add_argument(
        "--route",
        action="append",
        dest="routes",
        metavar="ROUTE",
        help="only these routes (repeatable; default: general + every adapter's route)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length (default 48)")
    parser.add_argument("--require", type=float, default=1.0, help="pass rate every route must reach (default 1.0)")
    parser.add_argument(
        "--models-only",
        action="store_true",
        help="measure the models alone: no in-character start for recognised questions about the assistant",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout (all answers included)")
    parser.add_argument("--verbose", action="store_true", help="print every failure, not just the first five")


def _engine_answers(
    engine: Any, system_prompt: str, max_new_tokens: int, prefix: Callable[[str], str] = lambda q: ""
) -> AnswerFn:
    """Answers through the product's own engine (one at a time, as a user would get them).

    `prefix(question)` is how the session starts that answer ("" for most questions).
    """
    from assistant.engine import GenerationParams, Message

    def answer(questions: Sequence[str], adapter: str | None) -> list[str]:
        out = []
        for i, question in enumerate(questions, start=1):
            messages = [Message("system", system_prompt), Message("user", question)]
            params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, answer_prefix=prefix(question))
            out.append("".join(engine.stream(messages, adapter, params)).strip())
            print(f"\r[probe] {adapter or 'general'}: {i}/{len(questions)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return out

    return answer


def _session_prefixes(settings: Any, identity: Any, questions: Sequence[ProbeQuestion]) -> Callable[[str], str]:
    """The answer start the session would give each probe question (the same encoder, data and detector)."""
    from adapters.wiring import build_encoder, routing_files
    from assistant.about_assistant import load_or_fit_detector
    from data.labels import load_labelled

    encoder = build_encoder(settings)
    detector = load_or_fit_detector(encoder, load_labelled(routing_files(settings)))
    texts = [q.question for q in questions]
    flagged = {t for t, f in zip(texts, detector.flags(encoder.encode(texts)), strict=True) if f}
    print(f"[probe] {len(flagged)}/{len(texts)} questions recognised as about the assistant", file=sys.stderr)
    return lambda q: identity.answer_prefix(q) if q in flagged else ""


def run_identity_eval(args: Any, settings: Any) -> int:
    """`eval identity`: the probe on every route through the real engine; exit 1 below --require."""
    from adapters.wiring import build_engine, system_prompt
    from assistant.errors import UsageError
    from data.identity import load_identity

    questions = load_probe(args.probe)
    engine = build_engine(settings)  # answer exactly as `ask` and the TUI do
    routes: list[tuple[str, str | None]] = [(GENERAL, None)] + [(a.route, a.name) for a in engine.adapters()]
    if args.routes:
        known = {route for route, _ in routes}
        unknown = sorted(set(args.routes) - known)
        if unknown:
            raise UsageError(f"unknown route(s): {', '.join(unknown)}", f"routes: {', '.join(sorted(known))}")
        routes = [r for r in routes if r[0] in args.routes]
    identity = load_identity()
    prefix = (lambda q: "") if args.models_only else _session_prefixes(settings, identity, questions)
    answers = _engine_answers(engine, system_prompt(settings), args.max_new_tokens, prefix)
    results = run_probe(answers, routes, questions)
    if args.json:
        print(
            json.dumps(
                {
                    "probe": str(args.probe),
                    "questions": len(questions),
                    "models_only": bool(args.models_only),
                    "pass_rate": summary(results),
                    "routes": [
                        {
                            "route": r.route,
                            "adapter": r.adapter,
                            "passed": r.passed,
                            "total": r.total,
                            "answers": r.answers,
                        }
                        for r in results
                    ],
                },
                ensure_ascii=False,
            )
        )
    else:
        print(format_results(results, show_failures=len(questions) if args.verbose else 5))
    return 0 if all(r.rate >= args.require for r in results) else 1
