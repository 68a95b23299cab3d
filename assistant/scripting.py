"""The stdin/stdout runner: answers to stdout, diagnostics to stderr, exit codes per CLI.md."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TextIO

from assistant.router import RouteChoice
from assistant.session import ChatSession, Done, Failed, RouteChosen, Token

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class Query:
    """One input line: its text, or why it could not be read."""

    line: int
    text: str | None
    error: str | None = None


def queries_from_args(texts: Iterable[str]) -> list[Query]:
    """Command-line texts, numbered from 1, blanks skipped."""
    return [Query(i, t.strip()) for i, t in enumerate(texts, start=1) if t.strip()]


def queries_from_stream(stream: BinaryIO) -> Iterator[Query]:
    """Non-empty lines of a byte stream; a line that is not UTF-8 becomes an error naming its number."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8").strip().lstrip("\ufeff")
        except UnicodeDecodeError as exc:
            yield Query(number, None, f"stdin line {number}: not valid UTF-8 (byte {exc.start}); skipped")
            continue
        if text:
            yield Query(number, text)


class RoutesText(Protocol):
    def route(self, text: str) -> RouteChoice: ...


def _emit_json(out: TextIO, obj: dict[str, object]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


def _sources_line(done: Done) -> str:
    """The knowledge entries an answer was given, for stderr."""
    return "[sources: " + "; ".join(f"{p.title} ({p.entry.id})" for p in done.sources) + "]"


def _cut_note(done: Done) -> str:
    """What fitting the prompt into the model's context cut, for stderr."""
    if done.prompt_kept is None:
        return "longer than the model's context; its start was cut"
    kept, given = done.prompt_kept
    return (
        f"longer than the model's context; only its last {kept:,} of {given:,} characters were read "
        "(the max_context setting raises the limit)"
    )


def _describe(chosen: RouteChosen) -> str:
    c = chosen.choice
    how = (
        "forced"
        if chosen.forced
        else ("kept from the previous turn" if chosen.sticky else f"confidence {c.confidence:.2f}")
    )
    return f"[route: {c.route} -> {chosen.adapter or 'base'} ({how})]"


def run_route(router: RoutesText, queries: Iterable[Query], as_json: bool, out: TextIO, err: TextIO) -> int:
    """`route`: classification only."""
    code = EXIT_OK
    for q in queries:
        if q.text is None:
            err.write(f"error: {q.error}\n")
            code = EXIT_FAILED
            continue
        choice = router.route(q.text)
        if as_json:
            _emit_json(out, {"query": q.text, **choice.as_json()})
        else:
            out.write(f"{choice.route}\t{choice.adapter or 'base'}\t{choice.confidence:.3f}\t{q.text}\n")
            out.flush()
    return code


def run_ask(session: ChatSession, queries: Iterable[Query], as_json: bool, out: TextIO, err: TextIO) -> int:
    """`ask`: answer every query; a failed one is reported and the rest still answered.

    Ctrl-C prints the partial answer and returns 130.
    """
    code = EXIT_OK
    for q in queries:
        if q.text is None:
            err.write(f"error: {q.error}\n")
            if as_json:
                _emit_json(out, {"query": None, "line": q.line, "error": q.error})
            code = EXIT_FAILED
            continue
        cancel = threading.Event()
        record: dict[str, object] = {"query": q.text}
        partial: list[str] = []
        try:
            for event in session.ask(q.text, cancel):
                if isinstance(event, RouteChosen):
                    c = event.choice
                    record.update(route=c.route, adapter=event.adapter, confidence=round(c.confidence, 4))
                    if event.warning:
                        err.write(f"warning: {event.warning}\n")
                    if not as_json:
                        err.write(_describe(event) + "\n")
                        err.flush()
                elif isinstance(event, Token):
                    partial.append(event.text)
                    if not as_json:
                        out.write(event.text)
                        out.flush()
                elif isinstance(event, Done):
                    if event.truncated_prompt:
                        err.write(f"warning: line {q.line}: {_cut_note(event)}\n")
                    record.update(
                        answer=event.answer,
                        new_tokens=event.new_tokens,
                        latency_ms=round(event.latency_ms, 1),
                        sources=[p.as_json() for p in event.sources],
                    )
                    if event.withheld:
                        record["withheld"] = event.withheld
                    if as_json:
                        _emit_json(out, record)
                    else:
                        out.write("\n\n" if not event.answer.endswith("\n") else "\n")
                        if event.sources:
                            err.write(_sources_line(event) + "\n")
                        out.flush()
                elif isinstance(event, Failed):
                    err.write(
                        f"error: line {q.line}: {event.error}\n" + (f"  hint: {event.hint}\n" if event.hint else "")
                    )
                    if as_json:
                        _emit_json(out, {**record, "answer": event.partial, "error": event.error})
                    code = EXIT_FAILED
        except KeyboardInterrupt:
            cancel.set()
            text = "".join(partial)
            if as_json:
                _emit_json(out, {**record, "answer": text, "stopped": True})
            else:
                out.write("\n")
            err.write("\ninterrupted: partial answer kept above\n")
            out.flush()
            return EXIT_INTERRUPTED
    return code
