"""Snapshot tests of the main screen and the /why view (fixed size, fake engine, fixed memory reader)."""

from __future__ import annotations

from textual.pilot import Pilot

from assistant.tui.prompt import PromptInput
from assistant.tui.screens import WhyScreen
from tests.tui.fakes import wait_for

SIZE = (110, 34)
CARE = "糖尿病患者的照护内容有哪些？"


async def _answer(pilot: Pilot, question: str, count: int) -> None:
    app = pilot.app
    app.query_one(PromptInput).cursor_blink = False  # a blinking cursor makes screenshots flaky
    await wait_for(pilot, lambda: app.session is not None, what="the session")  # type: ignore[attr-defined]
    app.query_one(PromptInput).load_text(question)
    await pilot.press("enter")
    await wait_for(
        pilot,
        lambda: app.current is None and not app.queue and len(app.query("AssistantMessage")) >= count,  # type: ignore[attr-defined]
        what="the answer",
    )


def test_main_screen(snap_compare, make_app) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _answer(pilot, CARE, 1)
        await _answer(pilot, "梅西率迈阿密国际夺队史首冠", 2)
        pilot.app.query_one(PromptInput).load_text("下一个问题")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_why_view(snap_compare, make_app) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _answer(pilot, CARE, 1)
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, WhyScreen), what="the why view")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)
