"""The code that runs off the UI thread: building the session and answering one turn."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from assistant.errors import USER_ERRORS
from assistant.history import HistoryStore
from assistant.session import ChatSession, Done, Failed, RouteChosen, Token
from assistant.tui.events import (
    AnswerDelta,
    AnswerDone,
    AnswerFailed,
    AnswerRouted,
    LoadFailed,
    LoadProgress,
    SessionReady,
)
from assistant.tui.format import routing_record, with_sources

SessionFactory = Callable[[Callable[[str], None]], ChatSession]
Post = Callable[[Message], object]

#: How often a streaming answer is written to the database: a killed app loses at most this much text.
FLUSH_SECONDS = 0.5

_ids = itertools.count(1)


@dataclass(eq=False)
class Turn:
    """One question on its way to an answer; `cancel` is the Esc button."""

    text: str
    conversation_id: int
    question_id: int
    id: int = field(default_factory=lambda: next(_ids))
    cancel: threading.Event = field(default_factory=threading.Event)


def load_session(factory: SessionFactory, post: Post) -> None:
    """Build the session (slow: loads models) and post SessionReady or LoadFailed."""

    def progress(line: str) -> None:
        post(LoadProgress(line))

    try:
        session = factory(progress)
    except USER_ERRORS as exc:
        post(LoadFailed(getattr(exc, "message", str(exc)), getattr(exc, "hint", "")))
    except Exception as exc:  # noqa: BLE001 - any loading failure must become a message, not a dead UI
        post(LoadFailed(f"{type(exc).__name__}: {exc}", "run `python main.py ask 你好` to see the full error"))
    else:
        post(SessionReady(session))


def run_turn(
    session: ChatSession, store: HistoryStore, turn: Turn, post: Post, flush_every: float | None = None
) -> None:
    """Answer one turn: save the answer as it streams, post each event up to the app."""
    flush_every = FLUSH_SECONDS if flush_every is None else flush_every
    answer_id: int | None = None
    record: dict[str, Any] = {}
    pieces: list[str] = []
    last_flush = time.monotonic()
    try:
        for event in session.ask(turn.text, cancel=turn.cancel):
            if isinstance(event, RouteChosen):
                choice = event.choice
                record = routing_record(event)
                answer_id = store.append(
                    turn.conversation_id,
                    "assistant",
                    "",
                    route=choice.route,
                    adapter=event.adapter,
                    confidence=choice.confidence,
                    routing=record,
                    complete=False,
                    reply_to=turn.question_id,
                )
                post(AnswerRouted(turn, event))
            elif isinstance(event, Token):
                pieces.append(event.text)
                post(AnswerDelta(turn, event.text))
                if answer_id is not None and time.monotonic() - last_flush >= flush_every:
                    store.update_partial(answer_id, "".join(pieces))
                    last_flush = time.monotonic()
            elif isinstance(event, Done):
                if answer_id is not None:
                    routing = with_sources(record, event) if event.sources or event.withheld else None
                    store.finish(answer_id, event.answer, stopped=event.stopped, routing=routing)
                post(AnswerDone(turn, event))
            elif isinstance(event, Failed):
                _save_failure(store, answer_id, event)
                post(AnswerFailed(turn, event))
    except Exception as exc:  # noqa: BLE001 - a router or database bug must not leave the UI waiting forever
        hint = "try again; if it keeps failing, restart the app"
        failed = Failed(f"{type(exc).__name__}: {exc}", hint, "".join(pieces))
        try:
            _save_failure(store, answer_id, failed)
        finally:
            post(AnswerFailed(turn, failed))


def _save_failure(store: HistoryStore, answer_id: int | None, failed: Failed) -> None:
    if answer_id is None:
        return
    if failed.partial:
        store.finish(answer_id, failed.partial, error=failed.error)
    else:
        store.delete_message(answer_id)  # nothing to keep; the question goes back to the prompt
