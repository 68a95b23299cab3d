"""ChatSession with a fake engine and a scripted router: routing, overrides, history, failures."""

from __future__ import annotations

import threading

import pytest

from assistant.errors import GenerationFailed, UsageError
from assistant.router import GENERAL, Candidate, RouteChoice
from assistant.session import ChatSession, Done, Failed, RouteChosen, Token
from tests.fakes import ScriptedEngine, adapter_info


class KeywordRouter:
    """caregiving when the text mentions 照护/护理/care, with a confidence given per call."""

    def __init__(self, confidence: float = 0.95) -> None:
        self.confidence = confidence

    def route(self, text: str) -> RouteChoice:
        care = any(k in text for k in ("照护", "护理", "care"))
        route = "caregiving" if care else GENERAL
        other = GENERAL if care else "caregiving"
        c = self.confidence
        return RouteChoice(
            route,
            "caregiving" if care else None,
            c,
            2 * c - 1,
            (Candidate(route, c), Candidate(other, 1 - c)),
            about_assistant="你是谁" in text,
        )


def events(session: ChatSession, text: str, cancel: threading.Event | None = None) -> list[object]:
    return list(session.ask(text, cancel))


def test_routes_to_adapter_and_streams_tokens() -> None:
    engine = ScriptedEngine([adapter_info("caregiving", "caregiving")])
    session = ChatSession(KeywordRouter(), engine, system_prompt="你是颐家小助手")
    out = events(session, "糖尿病患者的照护内容有哪些？")
    chosen = out[0]
    assert isinstance(chosen, RouteChosen) and chosen.adapter == "caregiving" and chosen.warning is None
    tokens = [e.text for e in out if isinstance(e, Token)]
    done = out[-1]
    assert isinstance(done, Done) and done.answer == "".join(tokens)
    assert done.answer.startswith("answer from caregiving")
    messages, adapter = engine.calls[0]
    assert adapter == "caregiving"
    assert messages[0].role == "system" and messages[0].content == "你是颐家小助手"


def test_general_goes_to_base() -> None:
    engine = ScriptedEngine([adapter_info("caregiving", "caregiving")])
    out = events(ChatSession(KeywordRouter(), engine), "梅西率迈阿密国际夺队史首冠")
    assert isinstance(out[0], RouteChosen) and out[0].adapter is None and out[0].choice.route == GENERAL
    assert engine.calls[0][1] is None


def test_missing_adapter_falls_back_to_base_with_warning() -> None:
    engine = ScriptedEngine([])
    out = events(ChatSession(KeywordRouter(), engine), "老人护理")
    chosen = out[0]
    assert isinstance(chosen, RouteChosen)
    assert chosen.choice.route == "caregiving" and chosen.adapter is None and chosen.choice.adapter is None
    assert chosen.warning and "caregiving" in chosen.warning
    assert engine.calls[0][1] is None


def test_override_forces_and_releases() -> None:
    engine = ScriptedEngine([adapter_info("caregiving", "caregiving")])
    session = ChatSession(KeywordRouter(), engine)
    session.set_override("caregiving")
    first = events(session, "今天天气怎么样")[0]
    assert isinstance(first, RouteChosen) and first.forced and first.adapter == "caregiving"
    session.set_override("base")
    second = events(session, "老人护理")[0]
    assert isinstance(second, RouteChosen) and second.adapter is None and second.forced
    session.set_override("auto")
    third = events(session, "老人护理")[0]
    assert isinstance(third, RouteChosen) and third.adapter == "caregiving" and not third.forced
    with pytest.raises(UsageError):
        session.set_override("nope")


def test_history_is_kept_for_multi_turn() -> None:
    engine = ScriptedEngine()
    session = ChatSession(KeywordRouter(), engine, keep_history=True)
    events(session, "你好")
    events(session, "再说一遍")
    roles = [m.role for m in engine.calls[1][0]]
    assert roles == ["user", "assistant", "user"]
    session.reset()
    events(session, "新的对话")
    assert [m.role for m in engine.calls[2][0]] == ["user"]


def test_independent_queries_keep_no_history() -> None:
    engine = ScriptedEngine()
    session = ChatSession(KeywordRouter(), engine, keep_history=False)
    events(session, "一")
    events(session, "二")
    assert [m.content for m in engine.calls[1][0]] == ["二"]


def test_sticky_keeps_route_unless_clearly_elsewhere() -> None:
    engine = ScriptedEngine([adapter_info("caregiving", "caregiving")])
    router = KeywordRouter(confidence=0.95)
    session = ChatSession(router, engine, sticky=True)
    events(session, "糖尿病老人的护理")
    router.confidence = 0.7  # the follow-up leans general, but not clearly
    follow = events(session, "那饮食呢？")[0]
    assert isinstance(follow, RouteChosen) and follow.sticky and follow.adapter == "caregiving"
    router.confidence = 0.97  # clearly general now
    clear = events(session, "梅西夺冠了")[0]
    assert isinstance(clear, RouteChosen) and not clear.sticky and clear.adapter is None


def test_cancel_marks_answer_stopped_and_keeps_partial() -> None:
    engine = ScriptedEngine()
    session = ChatSession(KeywordRouter(), engine)
    cancel = threading.Event()
    collected = []
    for event in session.ask("给我讲个很长的故事", cancel):
        collected.append(event)
        if isinstance(event, Token) and len([e for e in collected if isinstance(e, Token)]) == 2:
            cancel.set()
    done = collected[-1]
    assert isinstance(done, Done) and done.stopped
    assert done.answer == "answer from"
    assert session.history[-1].content == "answer from"


def test_engine_failure_becomes_failed_event_with_partial() -> None:
    engine = ScriptedEngine(fail_with=GenerationFailed("boom", "retry"))
    out = events(ChatSession(KeywordRouter(), engine), "你好")
    failed = out[-1]
    assert isinstance(failed, Failed) and failed.error == "boom" and failed.hint == "retry"
    assert failed.partial == "answer from"
    unexpected = ScriptedEngine(fail_with=RuntimeError("kaput"))
    last = events(ChatSession(KeywordRouter(), unexpected), "你好")[-1]
    assert isinstance(last, Failed) and "kaput" in last.error


def test_restored_conversation_keeps_sticky_route() -> None:
    from assistant.engine import Message

    engine = ScriptedEngine([adapter_info("caregiving", "caregiving")])
    router = KeywordRouter(confidence=0.7)
    session = ChatSession(router, engine, sticky=True)
    session.restore([Message("user", "老人护理"), Message("assistant", "好的")], ("caregiving", "caregiving"))
    follow = events(session, "那饮食呢？")[0]
    assert isinstance(follow, RouteChosen) and follow.sticky and follow.adapter == "caregiving"
    assert session.last_route == ("caregiving", "caregiving")
    assert [m.role for m in engine.calls[0][0]] == ["user", "assistant", "user"]


def test_questions_about_the_assistant_start_in_character_on_every_route() -> None:
    engine = ScriptedEngine([adapter_info("caregiving", "caregiving")])
    session = ChatSession(KeywordRouter(), engine, answer_prefix=lambda q: "我是颐家小助手， ")
    out = events(session, "你是谁")
    assert isinstance(out[0], RouteChosen) and out[0].choice.about_assistant
    done = out[-1]
    assert isinstance(done, Done) and done.answer.startswith("我是颐家小助手， answer from base")
    assert engine.params[-1].answer_prefix == "我是颐家小助手， "
    assert session.history[-1].content == done.answer  # the prefix is part of the remembered answer

    events(session, "糖尿病照护要点")  # not about the assistant: no prefix
    assert engine.params[-1].answer_prefix == ""

    session.set_override("caregiving")  # a forced route still starts identity answers in character
    forced = events(session, "你是谁，照护")
    assert isinstance(forced[0], RouteChosen) and forced[0].forced and forced[0].choice.about_assistant
    assert engine.params[-1].answer_prefix == "我是颐家小助手， " and engine.calls[-1][1] == "caregiving"


def test_without_an_answer_prefix_nothing_is_prefixed() -> None:
    engine = ScriptedEngine()
    events(ChatSession(KeywordRouter(), engine), "你是谁")
    assert engine.params[-1].answer_prefix == ""
