"""The identity probe: fixed identity questions, and the rule that an answer passes only when it names us.

Training runs it on a freshly trained adapter (its manifest records the pass rate); `eval identity`
(measurement/eval_identity.py) runs it through the product as `ask` answers.
"""

from __future__ import annotations

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
