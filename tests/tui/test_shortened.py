"""The TUI tells the user when a conversation was shortened to fit the model's context, and by how much."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from assistant.engine import Message
from tests.tui.fakes import FakeEngine, wait_for


class CuttingFakeEngine(FakeEngine):
    def stream(self, messages: Sequence[Message], *args: Any, **kwargs: Any) -> Iterator[str]:
        stats = kwargs.get("stats") or (args[3] if len(args) > 3 else None)
        if stats is not None:
            stats.truncated_prompt, stats.kept_chars, stats.total_chars = True, 1234, 56789
        yield from super().stream(messages, *args, **kwargs)


def test_the_tui_shows_a_notice_when_the_conversation_was_shortened(make_app: Callable[..., Any]) -> None:
    from assistant.tui.prompt import PromptInput

    async def scenario() -> None:
        app = make_app(CuttingFakeEngine())
        async with app.run_test(size=(110, 36)) as pilot:
            await wait_for(pilot, lambda: app.session is not None, what="the session")
            app.query_one(PromptInput).load_text("a very long paste")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any(n.title == "Shortened" for n in app._notifications), what="notice")
            notice = next(n for n in app._notifications if n.title == "Shortened")
            assert "last 1,234 of 56,789 characters" in notice.message

    asyncio.run(scenario())
