"""Pure TUI helpers: command parsing, badge words and colour levels, sizes."""

from __future__ import annotations

import pytest

from assistant.router import Candidate, RouteChoice
from assistant.session import RouteChosen
from assistant.tui.commands import COMMANDS, KEYS, Command, help_markdown, literal, parse
from assistant.tui.format import badge_text, confidence_level, human_size, route_score, routing_record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/why", Command("why")),
        ("  /Adapter  caregiving ", Command("adapter", "caregiving")),
        ("/export /tmp/a b.md", Command("export", "/tmp/a b.md")),
        ("你好", None),
        ("//usr/bin", None),
    ],
)
def test_parse(text: str, expected: Command | None) -> None:
    assert parse(text) == expected


def test_literal_slash() -> None:
    assert literal("//usr/bin 是什么") == "/usr/bin 是什么" and literal(" 你好 ") == "你好"


def test_help_lists_every_command_and_key() -> None:
    text = help_markdown(["caregiving"])
    assert all(name in text for name in ("/why", "/history", "/new", "/export", "/help"))
    assert all(key in text for key, _ in KEYS) and set(COMMANDS) >= {"adapter", "why", "history", "new", "export"}
    assert "`caregiving`" in text and "≥ 90%" in text


def record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "route": "caregiving",
        "adapter": "caregiving",
        "confidence": 0.95,
        "forced": False,
        "sticky": False,
        "abstained": False,
        "predicted": "caregiving",
        "candidates": [{"route": "caregiving", "score": 0.95}, {"route": "general", "score": 0.05}],
    }
    return base | overrides


def test_badge_words() -> None:
    assert badge_text(record()) == "● caregiving · adapter caregiving · 95%"
    assert badge_text(record(route="general", adapter=None, confidence=0.9)) == "● general · base · 90%"
    assert badge_text(record(forced=True)) == "● caregiving · adapter caregiving · forced"
    assert badge_text(record(), "stopped").endswith("· stopped")
    unsure = record(route="general", adapter=None, confidence=0.55, abstained=True, predicted="caregiving")
    assert badge_text(unsure) == "● general · base · 55% · unsure (caregiving?)"
    assert badge_text(None) == "● route unknown"


def test_sticky_badge_shows_the_kept_route_score_and_the_router_preference() -> None:
    sticky = record(
        sticky=True,
        confidence=0.6,
        predicted="general",
        candidates=[{"route": "general", "score": 0.6}, {"route": "caregiving", "score": 0.4}],
    )
    assert route_score(sticky) == 0.4 and confidence_level(sticky) == "low"
    assert badge_text(sticky) == "● caregiving · adapter caregiving · 40% · kept for follow-up (router: general 60%)"


@pytest.mark.parametrize(("confidence", "level"), [(0.95, "high"), (0.90, "high"), (0.8, "mid"), (0.5, "low")])
def test_confidence_levels(confidence: float, level: str) -> None:
    assert confidence_level(record(confidence=confidence)) == level
    assert confidence_level(record(forced=True)) == "forced"


def test_routing_record_keeps_what_why_needs() -> None:
    choice = RouteChoice(
        "general", None, 0.6, 0.2, (Candidate("general", 0.6),), predicted="caregiving", abstained=True
    )
    saved = routing_record(RouteChosen(choice, None, sticky=False, warning="w"))
    assert saved["candidates"] == [{"route": "general", "score": 0.6}]
    assert (saved["abstained"], saved["predicted"], saved["forced"], saved["warning"]) == (
        True,
        "caregiving",
        False,
        "w",
    )


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 512, 1536, 12_582_912)] == ["?", "512 B", "1.5 KB", "12.0 MB"]


def test_why_says_when_an_answer_starts_in_character() -> None:
    from assistant.tui.screens import explain

    choice = RouteChoice("general", None, 0.9, 0.8, (Candidate("general", 0.9),), about_assistant=True)
    record = routing_record(RouteChosen(choice, None))
    assert record["about_assistant"] is True
    assert "starts in character" in explain("你是谁", record).plain
    plain = routing_record(RouteChosen(RouteChoice("general", None, 0.9, 0.8, ()), None))
    assert "starts in character" not in explain("今天天气", plain).plain


def test_an_answer_with_knowledge_names_its_sources_under_the_badge_and_in_why() -> None:
    from assistant.knowledge import Passage
    from assistant.session import Done
    from assistant.tui.format import badge_text, with_sources
    from assistant.tui.screens import explain
    from data.knowledge import KnowledgeEntry

    entry = KnowledgeEntry("falls", "老人跌倒后的处理", "After a fall", "公开照护指南", "先别急着扶起。", "", "x.md")
    done = Done("answer", 3, 10.0, 1.0, sources=(Passage(entry, 0.91, "zh"),), withheld=1)
    record = with_sources({"route": "caregiving", "adapter": "caregiving", "confidence": 0.95}, done)

    assert badge_text(record).splitlines()[1].strip() == "sources: 老人跌倒后的处理"
    why = explain("老人摔倒了怎么办", record).plain
    assert "Knowledge given to the model" in why and "公开照护指南" in why and "先别急着扶起。" in why
    assert "left out 1 sentence" in why
    assert "sources" not in badge_text({"route": "general", "adapter": None, "confidence": 0.9})
