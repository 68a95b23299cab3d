"""The identity probe: fixed identity questions, answered on every route, passed only when the answer names us.

Torch-free at import: `eval` registers its `identity` sub-command from here while building `--help`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import DATA_DIR
from data.errors import BadInputFile
from data.files import read_json_objects

PROBE_FILE = DATA_DIR / "identity_probe.jsonl"
GENERAL = "general"

#: An answer passes when it names the assistant or its organisation (case-insensitive) ...
#: "Yijia" is 颐家 in English: "Yijia is a home-care company" names the organisation as surely as 颐家 does.
OUR_NAMES = ("颐家小助手", "Yijia Assistant", "上海颐家", "Shanghai Yijia", "颐家", "Yijia")
#: ... and does not claim (or even mention) another model or maker.
OTHER_NAMES = ("Qwen", "通义千问", "通义", "Alibaba", "阿里云", "阿里巴巴", "OpenAI")

#: answer_fn(questions, adapter) -> answers; adapter None = the plain base (general route).
AnswerFn = Callable[[Sequence[str], str | None], list[str]]


@dataclass(frozen=True)
class ProbeQuestion:
    """One probe question and its language."""

    question: str
    lang: str


@dataclass
class RouteResult:
    """How one route did on the probe."""

    route: str
    adapter: str | None
    total: int = 0
    passed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def load_probe(path: Path = PROBE_FILE) -> list[ProbeQuestion]:
    """Probe questions: JSON Lines {"question": ..., "lang": "zh"|"en"}."""
    out: list[ProbeQuestion] = []
    for number, obj in read_json_objects(path):
        if not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise BadInputFile(str(path), number, 'expected {"question": ..., "lang": ...}')
        out.append(ProbeQuestion(obj["question"].strip(), str(obj.get("lang", ""))))
    if not out:
        raise BadInputFile(str(path), None, "no probe questions")
    return out


def judge(answer: str) -> tuple[bool, str]:
    """(passed, why not): names us, and names no other model or maker."""
    lowered = answer.lower()
    other = [n for n in OTHER_NAMES if n.lower() in lowered]
    if other:
        return False, f"mentions {', '.join(other)}"
    if not any(n.lower() in lowered for n in OUR_NAMES):
        return False, "does not name 颐家小助手 / Yijia Assistant / 上海颐家 / Yijia"
    return True, ""


def run_probe(
    answer_fn: AnswerFn, routes: Sequence[tuple[str, str | None]], questions: Sequence[ProbeQuestion]
) -> list[RouteResult]:
    """Ask every question on every (route, adapter) and judge each answer."""
    results = []
    texts = [q.question for q in questions]
    for route, adapter in routes:
        result = RouteResult(route, adapter, total=len(texts))
        for question, answer in zip(texts, answer_fn(texts, adapter), strict=True):
            ok, why = judge(answer)
            result.passed += ok
            result.answers.append({"question": question, "answer": answer, "passed": ok})
            if not ok:
                result.failures.append({"question": question, "answer": answer, "reason": why})
        results.append(result)
    return results


def format_results(results: Sequence[RouteResult], show_failures: int = 5) -> str:
    """A per-route table plus the first few failures of each route."""
    lines = [f"{'route':<16} {'adapter':<16} {'passed':>9}  rate"]
    for r in results:
        lines.append(f"{r.route:<16} {r.adapter or '(base)':<16} {r.passed:>4}/{r.total:<4}  {r.rate:.0%}")
    for r in results:
        for failure in r.failures[:show_failures]:
            answer = " ".join(failure["answer"].split())[:120]
            lines.append(f"  FAIL [{r.route}] {failure['question']} -> {answer!r} ({failure['reason']})")
        if len(r.failures) > show_failures:
            lines.append(f"  ... and {len(r.failures) - show_failures} more on {r.route} (--verbose shows all)")
    return "\n".join(lines)


def summary(results: Sequence[RouteResult]) -> dict[str, float]:
    """{route: pass rate}, for manifests."""
    return {r.route: round(r.rate, 4) for r in results}


# ---------------------------------------------------------------- `eval identity`


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
    from assistant.about_assistant import load_or_fit_detector
    from data.labels import load_labelled
    from training.router_refit import build_encoder, routing_files

    encoder = build_encoder(settings)
    examples = load_labelled(routing_files(settings, settings.adapters_dir))
    detector = load_or_fit_detector(encoder, examples)
    texts = [q.question for q in questions]
    flagged = {t for t, f in zip(texts, detector.flags(encoder.encode(texts)), strict=True) if f}
    print(f"[probe] {len(flagged)}/{len(texts)} questions recognised as about the assistant", file=sys.stderr)
    return lambda q: identity.answer_prefix(q) if q in flagged else ""


def run_identity_eval(args: Any, settings: Any) -> int:
    """`eval identity`: the probe on every route through the real engine; exit 1 below --require."""
    from adapters.base_model import load_base
    from adapters.hf_engine import TransformersEngine
    from adapters.inference_tuning import tune_for_inference
    from assistant.errors import UsageError
    from data.identity import load_identity

    questions = load_probe(args.probe)
    loaded = load_base(settings, progress=True)
    tune_for_inference(loaded.model, loaded.info, settings)  # answer exactly as `ask` and the TUI do

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    engine = TransformersEngine(
        loaded.model, loaded.tokenizer, loaded.info, loaded.checksum, settings.adapters_dir, warn=warn
    )
    routes: list[tuple[str, str | None]] = [(GENERAL, None)] + [(a.route, a.name) for a in engine.adapters()]
    if args.routes:
        known = {route for route, _ in routes}
        unknown = sorted(set(args.routes) - known)
        if unknown:
            raise UsageError(f"unknown route(s): {', '.join(unknown)}", f"routes: {', '.join(sorted(known))}")
        routes = [r for r in routes if r[0] in args.routes]
    identity = load_identity()
    system_prompt = settings.system_prompt or identity.system_prompt()
    prefix = (lambda q: "") if args.models_only else _session_prefixes(settings, identity, questions)
    results = run_probe(_engine_answers(engine, system_prompt, args.max_new_tokens, prefix), routes, questions)
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
