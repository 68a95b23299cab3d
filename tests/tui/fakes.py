"""A deterministic engine, router and session factory for driving the TUI without a model."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from textual.pilot import Pilot

from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from assistant.router import GENERAL, Candidate, Neighbour, RouteChoice
from assistant.session import ChatSession

CARE_WORDS = ("照护", "护理", "患者", "care")

FAKE_ADAPTERS = [
    AdapterInfo(
        "caregiving", "caregiving", "/fake/adapters/caregiving", "fake-base", "2025-11-20T08:00:00+00:00", 12_582_912
    ),
    AdapterInfo(
        "gardening", "gardening", "/fake/adapters/gardening", "fake-base", "2025-11-21T09:30:00+00:00", 3_145_728
    ),
]


class FakeEngine:
    """Answers word by word with a fixed text naming the adapter; respects `cancel`.

    `delay` sleeps between pieces (interruptibly); `hold_after=N` blocks after N pieces until
    cancelled or `release` is set (so a test can look at, or stop, a half-streamed answer);
    `fail_after=N` raises after N pieces.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        hold_after: int | None = None,
        fail_after: int | None = None,
        adapters: Sequence[AdapterInfo] = FAKE_ADAPTERS,
        answer: str | None = None,
    ) -> None:
        self.delay = delay
        self.hold_after = hold_after
        self.fail_after = fail_after
        self.answer = answer
        self._adapters = list(adapters)
        self.calls: list[tuple[list[Message], str | None]] = []
        self.holding = threading.Event()  # set once blocked at hold_after
        self.release = threading.Event()

    def info(self) -> EngineInfo:
        return EngineInfo("Qwen2.5-Coder-0.5B-Instruct", "4bit nf4", "cpu", "fake")

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters)

    def answer_for(self, question: str, adapter: str | None) -> str:
        """The full answer this engine gives."""
        if self.answer is not None:
            return self.answer
        return (
            f"**{adapter or 'base'}** answers: {question}\n\n"
            "- first point of the answer\n- second point of the answer\n\nThat is all."
        )

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        self.calls.append((list(messages), adapter))
        cancel = cancel or threading.Event()
        pieces = re.findall(r"\s*\S+", self.answer_for(messages[-1].content, adapter))
        for i, piece in enumerate(pieces[: params.max_new_tokens]):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the fake engine broke")
            if self.hold_after is not None and i == self.hold_after:
                self.holding.set()
                while not (cancel.is_set() or self.release.is_set()):
                    cancel.wait(0.01)
            if self.delay:
                cancel.wait(self.delay)
            if cancel.is_set():
                break
            if stats is not None:
                # Deterministic timings: first piece at 0.1 s, then 20 pieces per second.
                stats.new_tokens += 1
                stats.first_token_s = 0.1
                stats.total_s = 0.1 + 0.05 * (stats.new_tokens - 1)
            yield piece


FOLLOW_UP_WORDS = ("还有", "more")


class FakeRouter:
    """Caregiving words -> caregiving at 0.95; vague follow-ups -> general at 0.60; else general at 0.90."""

    def route(self, text: str) -> RouteChoice:
        if any(word in text.lower() for word in CARE_WORDS):
            return RouteChoice(
                "caregiving",
                "caregiving",
                0.95,
                0.90,
                (Candidate("caregiving", 0.95), Candidate(GENERAL, 0.05)),
                (
                    Neighbour("老人糖尿病日常怎么护理？", "caregiving", 0.83),
                    Neighbour("卧床患者如何预防压疮", "caregiving", 0.71),
                    Neighbour("今天天气怎么样", GENERAL, 0.22),
                ),
                predicted="caregiving",
            )
        if any(word in text.lower() for word in FOLLOW_UP_WORDS):
            candidates = (Candidate(GENERAL, 0.60), Candidate("caregiving", 0.40))
            return RouteChoice(GENERAL, None, 0.60, 0.20, candidates, predicted=GENERAL)
        return RouteChoice(
            GENERAL,
            None,
            0.90,
            0.80,
            (Candidate(GENERAL, 0.90), Candidate("caregiving", 0.10)),
            (Neighbour("梅西是哪国人", GENERAL, 0.64), Neighbour("老人糖尿病日常怎么护理？", "caregiving", 0.12)),
            predicted=GENERAL,
        )


def session_factory(
    engine: FakeEngine | None = None, *, gate: threading.Event | None = None, fail: Exception | None = None
) -> Callable[[Callable[[str], None]], ChatSession]:
    """A factory like main.py's: reports progress, optionally waits for `gate` (to test loading), builds a session."""

    def build(progress: Callable[[str], None]) -> ChatSession:
        progress("loading the router…")
        print("[fake] de-quantizing the base model", file=sys.stderr, flush=True)  # as adapters/base_model does
        if gate is not None:
            gate.wait(10)
        progress("loading the base model…")
        if fail is not None:
            raise fail
        return ChatSession(FakeRouter(), engine or FakeEngine(), sticky=True)

    return build


def fixed_memory() -> float:
    """A memory reader that never varies (for snapshots)."""
    return 512.0


async def wait_for(pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Let the app run until `condition()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)
    await pilot.pause()
