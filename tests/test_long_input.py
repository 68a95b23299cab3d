"""A prompt cut to fit the context is reported with how much was read (the TUI notice: tests/tui/test_shortened.py)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence

from assistant.engine import GenerationParams, Message, StreamStats
from assistant.scripting import queries_from_args, run_ask
from assistant.session import ChatSession, Done
from tests.fakes import ScriptedEngine
from tests.test_session import KeywordRouter


class CuttingEngine(ScriptedEngine):
    """Reads only the last 6,000 characters of the conversation, as an engine with a small context would."""

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        given = sum(len(m.content) for m in messages if m.role != "system")
        if stats is not None and given > 6000:
            stats.truncated_prompt, stats.kept_chars, stats.total_chars = True, 6000, given
        yield from super().stream(messages, adapter, params, cancel, stats)


def test_ask_says_how_much_of_a_long_line_was_read() -> None:
    session = ChatSession(KeywordRouter(), CuttingEngine(), GenerationParams(max_new_tokens=4), keep_history=False)
    out, err = io.StringIO(), io.StringIO()
    run_ask(session, queries_from_args(["short question", "长" * 100_000]), True, out, err)
    warnings = [line for line in err.getvalue().splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: line 2: longer than the model's context; only its last 6,000 of 100,000 characters were read "
        "(the max_context setting raises the limit)"
    ]


def test_done_carries_the_kept_and_given_characters_only_when_cut() -> None:
    session = ChatSession(KeywordRouter(), CuttingEngine(), GenerationParams(max_new_tokens=4), keep_history=False)
    short = next(e for e in session.ask("short question") if isinstance(e, Done))
    long = next(e for e in session.ask("x" * 7000) if isinstance(e, Done))
    assert short.prompt_kept is None and not short.truncated_prompt
    assert long.prompt_kept == (6000, 7000) and long.truncated_prompt
