"""Pilot tests of the chat app against the fake engine and router, with a temp history database."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from textual.widgets import OptionList

from assistant.errors import ModelUnavailable
from assistant.history import HistoryStore
from assistant.tui import generation
from assistant.tui.app import ChatApp
from assistant.tui.loading import LoadingPanel
from assistant.tui.prompt import PromptInput
from assistant.tui.screens import HelpScreen, HistoryScreen, WhyScreen
from assistant.tui.statusbar import StatusBar
from assistant.tui.transcript import AssistantMessage, RouteBadge, UserMessage
from tests.tui.fakes import FakeEngine, wait_for

CARE = "糖尿病患者的照护内容有哪些？"
MESSI = "梅西率迈阿密国际夺队史首冠"


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def send(pilot, text: str) -> None:
    prompt = pilot.app.query_one(PromptInput)
    prompt.load_text(text)
    await pilot.press("enter")


def answers(app: ChatApp) -> list[AssistantMessage]:
    return list(app.query(AssistantMessage))


def badge(answer: AssistantMessage) -> str:
    return str(answer.query_one(RouteBadge).render())


def notices(app: ChatApp) -> str:
    return "\n".join(n.message for n in app._notifications)


async def ready(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.session is not None, what="the session")


async def answered(pilot, count: int = 1) -> None:
    await wait_for(
        pilot,
        lambda: pilot.app.current is None and not pilot.app.queue and len(answers(pilot.app)) >= count,
        what=f"{count} answer(s)",
    )


def test_question_streams_an_answer_with_a_caregiving_badge(make_app, store: HistoryStore) -> None:
    engine = FakeEngine(hold_after=3)

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await wait_for(pilot, engine.holding.is_set, what="the engine to stream")
            await wait_for(pilot, lambda: answers(app)[0].text.strip() != "", what="first pieces")
            # Mid-answer: the badge is already there, the text is partial and still growing.
            answer = answers(app)[0]
            assert answer.text == "**caregiving** answers: " + CARE
            assert badge(answer) == "● caregiving · adapter caregiving · 95%"
            assert answer.query_one(RouteBadge).has_class("-high")
            engine.release.set()
            await answered(pilot)
            full = engine.answer_for(CARE, "caregiving")
            assert answer.text == full and answer.ending == ""
            assert "first point of the answer" in answer.query_one("Markdown").source
            assert round(app.query_one(StatusBar).rate or 0, 6) == 20.0
            assert app.query_one(PromptInput).text == ""
            assert engine.calls[0][1] == "caregiving"
        saved = store.load(store.latest() or 0)
        assert [(m.role, m.route, m.adapter, m.confidence, m.complete) for m in saved] == [
            ("user", None, None, None, True),
            ("assistant", "caregiving", "caregiving", 0.95, True),
        ]
        assert saved[1].content == full

    run(scenario())


def test_general_question_gets_a_base_badge_and_context_is_kept(make_app) -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot, 1)
            await send(pilot, MESSI)
            await answered(pilot, 2)
            assert badge(answers(app)[1]) == "● general · base · 90%"
            messages, adapter = engine.calls[1]
            assert adapter is None
            assert [m.role for m in messages] == ["user", "assistant", "user"]  # multi-turn context
            assert app.active == "base"

    run(scenario())


def test_vague_follow_up_stays_on_the_current_route(make_app) -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot, 1)
            await send(pilot, "还有吗")  # the fake router says general at only 0.60: not clear enough to move
            await answered(pilot, 2)
            assert badge(answers(app)[1]) == (
                "● caregiving · adapter caregiving · 40% · kept for follow-up (router: general 60%)"
            )
            assert engine.calls[1][1] == "caregiving"

    run(scenario())


def test_adapter_command_forces_and_releases_the_route(make_app) -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, "/adapter base")
            assert app.session is not None and app.session.override == "base"
            assert app.query_one(StatusBar).mode == "base"
            await send(pilot, CARE)
            await answered(pilot, 1)
            assert engine.calls[-1][1] is None
            assert badge(answers(app)[0]) == "● general · base · forced"
            assert answers(app)[0].query_one(RouteBadge).has_class("-forced")

            await send(pilot, "/adapter nope")
            assert "no adapter named 'nope'" in notices(app) and "caregiving, gardening" in notices(app)
            assert app.session.override == "base"

            await send(pilot, "/adapter gardening")
            await send(pilot, MESSI)
            await answered(pilot, 2)
            assert engine.calls[-1][1] == "gardening"

            await send(pilot, "/adapter auto")
            assert app.session.override is None and app.query_one(StatusBar).mode == "auto"
            await send(pilot, CARE)
            await answered(pilot, 3)
            assert engine.calls[-1][1] == "caregiving"

    run(scenario())


def test_f4_cycles_routes_and_the_panel_forces_one(make_app) -> None:
    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            seen = []
            for _ in range(4):
                await pilot.press("f4")
                seen.append(app.session.override if app.session else "?")
            assert seen == ["caregiving", "gardening", "base", None]
            options = app.query_one("#adapter-list", OptionList)
            options.focus()
            for _ in range(3):
                if options.highlighted_option is not None and options.highlighted_option.id == "caregiving":
                    break
                await pilot.press("down")
            await pilot.press("enter")
            assert app.session is not None and app.session.override == "caregiving"

    run(scenario())


def test_initial_adapter_is_applied_once_loaded(make_app) -> None:
    async def scenario() -> None:
        app = make_app(initial_adapter="base")
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            assert app.session is not None and app.session.override == "base"

    run(scenario())


def test_why_shows_candidates_and_nearest_examples(make_app) -> None:
    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, "/why")
            assert "no routed answer yet" in notices(app)
            await send(pilot, CARE)
            await answered(pilot)
            await send(pilot, "/why")
            await wait_for(pilot, lambda: isinstance(app.screen, WhyScreen), what="the why view")
            text = str(app.screen.query_one("#why-body").render())
            assert "caregiving → adapter caregiving" in text and "Confidence 95%" in text
            assert "0.950" in text and "0.050" in text
            assert "老人糖尿病日常怎么护理？" in text and "0.83" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, WhyScreen)
            # Selecting the badge opens the same view.
            await pilot.click(RouteBadge)
            await wait_for(pilot, lambda: isinstance(app.screen, WhyScreen), what="the why view from the badge")

    run(scenario())


def test_escape_stops_the_answer_and_keeps_the_partial_text(make_app, store: HistoryStore) -> None:
    engine = FakeEngine(hold_after=4)

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await wait_for(pilot, engine.holding.is_set, what="the engine to stream")
            await pilot.press("escape")
            await answered(pilot)
            answer = answers(app)[0]
            assert answer.ending == "stopped" and answer.has_class("-interrupted")
            assert badge(answer).endswith("· stopped")
            assert answer.text.startswith("**caregiving** answers:")
            assert app.session is not None and app.session.history[-1].content == answer.text
            # The app is usable again: the next question is answered.
            engine.hold_after = None
            await send(pilot, MESSI)
            await answered(pilot, 2)
            assert answers(app)[1].ending == ""
        saved = store.load(store.latest() or 0)
        assert saved[1].stopped and saved[1].content.startswith("**caregiving** answers:")

    run(scenario())


def test_partial_answer_is_saved_while_streaming(make_app, db_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(generation, "FLUSH_SECONDS", 0.0)
    engine = FakeEngine(hold_after=3)

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await wait_for(pilot, engine.holding.is_set, what="the engine to stream")
            # What a `kill -9` right now would leave behind, read through another connection.
            other = HistoryStore(db_path)
            try:
                question, answer = other.load(other.latest() or 0)
            finally:
                other.close()
            assert question.content == CARE
            assert not answer.complete and answer.content == "**caregiving** answers: " + CARE
            await pilot.press("escape")
            await answered(pilot)

    run(scenario())


def test_history_survives_a_restart(make_app, store: HistoryStore) -> None:
    engine = FakeEngine()

    async def first_run() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot, 1)
            await send(pilot, MESSI)
            await answered(pilot, 2)

    async def second_run() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            assert [w.render().plain for w in app.query(UserMessage)] == [CARE, MESSI]  # type: ignore[union-attr]
            restored = answers(app)
            assert [badge(a) for a in restored] == ["● caregiving · adapter caregiving · 95%", "● general · base · 90%"]
            assert app.session is not None and [m.content for m in app.session.history][0::2] == [CARE, MESSI]
            assert "Reopened your last conversation" in notices(app)
            await send(pilot, "还有吗")
            await answered(pilot, 3)
            assert len(engine.calls[-1][0]) == 5  # the restored turns went to the model as context
            # /why still works for a restored answer: the routing details were saved.
            app.show_why(restored[0])
            await wait_for(pilot, lambda: isinstance(app.screen, WhyScreen), what="why view")
            assert "0.950" in str(app.screen.query_one("#why-body").render())

    run(first_run())
    run(second_run())


def test_killed_mid_answer_reopens_marked_interrupted(make_app, store: HistoryStore) -> None:
    cid = store.create()
    store.append(cid, "user", CARE)
    store.append(
        cid, "assistant", "half of the ans", route="caregiving", adapter="caregiving", confidence=0.95, complete=False
    )

    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            answer = answers(app)[0]
            assert answer.text == "half of the ans" and answer.ending == "interrupted"
            assert badge(answer).endswith("· interrupted")

    run(scenario())


def test_question_typed_during_loading_is_queued_then_answered(make_app, store: HistoryStore) -> None:
    gate = threading.Event()
    engine = FakeEngine()

    async def scenario() -> None:
        app = make_app(engine, gate=gate)
        async with app.run_test(size=(110, 36)) as pilot:
            panel = app.query_one(LoadingPanel)
            await wait_for(pilot, lambda: "[fake] de-quantizing the base model" in panel.lines, what="printed progress")
            assert "loading the router…" in panel.lines
            await send(pilot, CARE)
            await pilot.pause()
            answer = answers(app)[0]
            assert "queued" in str(answer.query_one(".status").render())
            assert engine.calls == [] and len(app.queue) == 1
            assert store.load(store.latest() or 0)[0].content == CARE  # saved before any answer
            gate.set()
            await answered(pilot)
            assert not app.query(LoadingPanel)
            assert answers(app)[0].text == engine.answer_for(CARE, "caregiving")

    run(scenario())


def test_two_queued_questions_reopen_in_question_answer_order(make_app, store: HistoryStore) -> None:
    gate = threading.Event()
    engine = FakeEngine(hold_after=2)

    async def first_run() -> None:
        app = make_app(engine, gate=gate)
        async with app.run_test(size=(110, 36)) as pilot:
            await send(pilot, CARE)
            await send(pilot, MESSI)
            await pilot.pause()
            assert "queued" in str(answers(app)[1].query_one(".status").render())
            gate.set()
            await wait_for(pilot, engine.holding.is_set, what="the first answer to stream")
            assert "waiting for the previous answer" in str(answers(app)[1].query_one(".status").render())
            engine.release.set()
            await answered(pilot, 2)

    async def second_run() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            assert [a.question for a in answers(app)] == [CARE, MESSI]
            assert [badge(a) for a in answers(app)] == [
                "● caregiving · adapter caregiving · 95%",
                "● general · base · 90%",
            ]
            assert app.session is not None and [m.role for m in app.session.history] == ["user", "assistant"] * 2

    run(first_run())
    run(second_run())


def test_route_without_an_installed_adapter_is_badged_base(make_app) -> None:
    engine = FakeEngine(adapters=[])

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot)
            assert badge(answers(app)[0]) == "● caregiving · base · 95%"
            assert engine.calls[-1][1] is None and "no installed adapter" in notices(app)

    run(scenario())


def test_load_failure_is_a_notification_not_a_crash(make_app) -> None:
    async def scenario() -> None:
        app = make_app(fail=ModelUnavailable("base model not found", "run scripts/setup.sh"))
        async with app.run_test(size=(110, 36)) as pilot:
            await wait_for(pilot, lambda: app.query_one(LoadingPanel).has_class("-failed"), what="failure")
            assert "base model not found\nrun scripts/setup.sh" in notices(app)
            await send(pilot, CARE)  # still accepted, saved and queued
            assert len(app.queue) == 1 and app.is_running

    run(scenario())


def test_failed_answer_notifies_and_restores_the_prompt(make_app, store: HistoryStore) -> None:
    async def scenario() -> None:
        app = make_app(FakeEngine(fail_after=0))
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await wait_for(
                pilot,
                lambda: app.current is None and "Answer failed" in "".join(n.title for n in app._notifications),
                what="failure",
            )
            assert "the fake engine broke" in notices(app)
            assert app.query_one(PromptInput).text == CARE
            assert not answers(app) and not app.query(UserMessage)
            assert store.load(store.latest() or 1) == []

    run(scenario())


def test_failure_after_some_text_keeps_it_marked_failed(make_app) -> None:
    async def scenario() -> None:
        app = make_app(FakeEngine(fail_after=3))
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await wait_for(
                pilot, lambda: app.current is None and answers(app) and answers(app)[0].ending, what="failure"
            )
            assert answers(app)[0].ending == "failed"
            assert app.query_one(PromptInput).text == CARE

    run(scenario())


def test_new_history_and_reopen(make_app, store: HistoryStore) -> None:
    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot, 1)
            first = app.conversation_id
            await send(pilot, "/new")
            assert app.conversation_id is None and not answers(app)
            assert app.session is not None and app.session.history == []
            await send(pilot, MESSI)
            await answered(pilot, 1)
            assert app.conversation_id != first
            await send(pilot, "/history")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
            await pilot.press("down", "enter")  # newest first: the second entry is the first conversation
            await wait_for(pilot, lambda: app.conversation_id == first, what="reopen")
            assert [a.question for a in answers(app)] == [CARE]
            assert app.session.history[0].content == CARE

    run(scenario())


def test_export_writes_markdown(make_app, db_path: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await send(pilot, "/export")
            assert "nothing to export" in notices(app)
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot)
            await send(pilot, "/export")
            target = tmp_path / "out" / "chat.md"
            await send(pilot, f"/export {target}")
        files = list((db_path.parent / "exports").glob("*.md"))
        assert len(files) == 1 and files[0].name.startswith("0001-")
        text = files[0].read_text(encoding="utf-8")
        assert f"## You\n\n{CARE}" in text and "caregiving · adapter caregiving · 95%" in text
        assert target.read_text(encoding="utf-8") == text

    run(scenario())


def test_help_unknown_commands_and_literal_slash(make_app) -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            assert "/adapter NAME\\|base\\|auto" in app.screen.markdown and "Ctrl+J" in app.screen.markdown
            await pilot.press("escape")
            await send(pilot, "/bogus")
            assert "unknown command /bogus" in notices(app)
            await send(pilot, "//usr/bin 是什么")
            await answered(pilot)
            assert engine.calls[-1][0][-1].content == "/usr/bin 是什么"

    run(scenario())


def test_ctrl_j_adds_a_line_and_enter_sends_both(make_app) -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        app = make_app(engine)
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await pilot.press(*"ab", "ctrl+j", *"cd")
            assert app.query_one(PromptInput).text == "ab\ncd"
            await pilot.press("enter")
            await answered(pilot)
            assert engine.calls[-1][0][-1].content == "ab\ncd"
            await pilot.press("up")
            assert app.query_one(PromptInput).text == "ab\ncd"  # Up in an empty box recalls the last question

    run(scenario())


def test_adapters_panel_lists_route_size_date_and_marks_active(make_app) -> None:
    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            await send(pilot, CARE)
            await answered(pilot)
            options = app.query_one("#adapter-list")
            text = "\n".join(str(options.get_option_at_index(i).prompt) for i in range(options.option_count))
            assert "caregiving  ● active" in text and "route caregiving" in text
            assert "12.0 MB · 2025-11-20" in text and "3.0 MB · 2025-11-21" in text
            assert "▶ auto" in text
            await pilot.press("f5")
            assert not app.query_one("AdaptersPanel").display

    run(scenario())


def test_unanswered_question_is_marked_and_recallable(make_app, store: HistoryStore) -> None:
    cid = store.create()
    store.append(cid, "user", CARE)  # the app was closed while this waited for the model

    async def scenario() -> None:
        app = make_app()
        async with app.run_test(size=(110, 36)) as pilot:
            await ready(pilot)
            assert app.query(".unanswered")
            await pilot.press("up")
            assert app.query_one(PromptInput).text == CARE

    run(scenario())
