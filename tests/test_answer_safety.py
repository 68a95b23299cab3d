"""The safety rules, the answer guard, knowledge retrieval and the session path that applies them (fakes only)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from assistant.answer_guard import AnswerGuard, drugs_named, violations
from assistant.answer_policy import AnswerPolicy, context_turn
from assistant.care_rules import classify, lead_for
from assistant.knowledge import KnowledgeIndex
from assistant.session import ChatSession, Done, Token
from data.errors import BadInputFile
from data.knowledge import load_knowledge, read_entry
from tests.fakes import HashingEncoder

DRUGS = ("阿司匹林", "布洛芬", "二甲双胍", "aspirin", "ibuprofen", "metformin", "华法林")


def entry(folder: Path, slug: str, title: str, zh: str, en: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug}.md"
    body = f"## 中文\n{zh}\n" + (f"\n## English\n{en}\n" if en else "")
    path.write_text(
        f"---\nid: {slug}\ntitle: {title}\ntitle_en: {title} (en)\nsource: 测试来源\ntags: [t]\n---\n{body}",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    "question",
    [
        "我爸突然嘴角歪了，说话不清楚，怎么办",
        "奶奶刚才摔倒了，头磕到了桌角",
        "老人胸口疼得厉害还出冷汗",
        "My dad suddenly can't lift his right arm and his speech is slurred",
        "She fell in the bathroom and hit her head",
        "my mother has chest pain and is sweating a lot",
    ],
)
def test_danger_signs_lead_with_emergency_services(question: str) -> None:
    lead = lead_for(question)
    assert lead is not None and not lead.complete
    assert ("120" in lead.text) and lead.text.index("120") < 60


@pytest.mark.parametrize(
    "question", ["中风患者的照护内容有哪些？", "糖尿病老人饮食要注意什么", "How do I help my mum with dementia sleep?"]
)
def test_ordinary_care_questions_get_no_lead(question: str) -> None:
    assert lead_for(question) is None


def test_live_data_is_answered_by_the_rule_alone_in_the_question_language() -> None:
    zh, en = lead_for("今天上海天气怎么样"), lead_for("What's the weather like today?")
    assert zh is not None and zh.complete and "实时" in zh.text
    assert en is not None and en.complete and "live information" in en.text
    assert lead_for("洗澡水温度多少合适") is None  # a care question that only sounds like a reading


def test_a_live_question_flagged_only_by_meaning_stays_answered_by_the_rule() -> None:
    question = "what's the weather like in shanghai right now? is it too hot for dad's walk"
    by_meaning = replace(classify(question), emergency=True, emergency_by_meaning=True)
    lead = lead_for(question, by_meaning)
    assert lead is not None and lead.complete  # the model never gets to invent a temperature
    assert lead.text.startswith("⚠️") and "live information" in lead.text  # the 120 line still comes first
    by_pattern = classify("he can't breathe, what's the weather like now, should I open the window")
    assert by_pattern.emergency and by_pattern.live
    named = lead_for("he can't breathe, what's the weather like now, should I open the window", by_pattern)
    assert named is not None and not named.complete  # signs the patterns saw: first aid may follow


def test_dose_medicine_price_and_contact_questions_are_recognised() -> None:
    assert classify("二甲双胍一次吃几片").dose
    assert classify("阿司匹林可以和布洛芬一起吃吗").medicine_change
    assert classify("请一个护工一个月多少钱").price
    assert classify("颐家的电话是多少").contact
    assert not classify("120急救电话怎么打").contact  # the emergency number is not a contact to decline
    assert not classify("What is a normal heart rate for an 80 year old?").price


def test_guard_drops_sentences_with_unasked_drugs_doses_prices_and_phones() -> None:
    question = "阿司匹林有什么副作用？"
    guard = AnswerGuard(question, DRUGS)
    pieces = [
        "阿司匹林可能",
        "刺激胃。",
        "可以改吃布洛芬。",
        "每次100mg。",
        "护工每月5000元。",
        "电话13812345678。",
        "多喝水。",
    ]
    out = "".join(guard.feed(p) for p in pieces) + guard.flush()
    assert out.startswith("阿司匹林可能刺激胃。")
    assert "布洛芬" not in out and "100mg" not in out and "5000元" not in out and "138" not in out
    assert out.endswith("多喝水。") and out.count("省略") == 1
    assert len(guard.dropped) == 4


def test_guard_keeps_figures_given_in_the_passages_and_holds_open_sentences() -> None:
    guard = AnswerGuard("翻身多久一次", DRUGS, allowed="每2小时翻身一次，每次10毫升温水")
    assert guard.feed("每次10毫升") == ""  # no sentence end yet: held back
    assert guard.feed("温水。下") == "每次10毫升温水。"
    assert guard.flush() == "下"


def test_detectors_match_words_not_parts_of_words() -> None:
    assert drugs_named("Take aspirin daily", DRUGS) == ["aspirin"]
    assert drugs_named("aspirinated", DRUGS) == []
    assert violations("Ask about aspirin.", "Is aspirin safe?", DRUGS) == []
    assert violations("Try ibuprofen instead.", "Is aspirin safe?", DRUGS) == ["names ibuprofen"]


def test_knowledge_entries_parse_and_bad_ones_name_the_file(tmp_path: Path) -> None:
    good = entry(tmp_path / "care", "falls", "跌倒", "先别急着扶起来。", "Do not lift them at once.")
    parsed = read_entry(good)
    assert (parsed.id, parsed.title_en, parsed.text_en) == ("falls", "跌倒 (en)", "Do not lift them at once.")
    bad = tmp_path / "care" / "bad.md"
    bad.write_text("---\nid: bad\ntitle: [unclosed\n---\n## 中文\nx\n", encoding="utf-8")
    with pytest.raises(BadInputFile) as caught:
        load_knowledge([tmp_path / "care"])
    assert "bad.md" in str(caught.value)


def test_retrieval_finds_the_entry_and_reports_nothing_below_the_floor(tmp_path: Path) -> None:
    folder = tmp_path / "caregiving"
    entry(folder, "turning", "卧床老人翻身", "卧床老人大约每2小时翻身一次，检查受压部位。")
    entry(folder, "diabetes", "糖尿病饮食", "定时定量进餐，少吃甜食。")
    index = KnowledgeIndex(HashingEncoder(), load_knowledge([folder]), min_score=0.2)
    found = index.search("卧床老人翻身多久一次", "zh")
    assert found and found[0].entry.id == "turning"
    strict = KnowledgeIndex(HashingEncoder(), load_knowledge([folder]), min_score=0.999)
    assert strict.search("完全无关的句子 abc", "zh") == []


class ScriptedEngine:
    """An engine that says the same unsafe thing whatever it is asked, and records what it was given."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.calls: list[tuple[list, object]] = []

    def adapters(self) -> list:
        return []

    def stream(self, messages, adapter, params, cancel=None, stats=None):  # type: ignore[no-untyped-def]
        self.calls.append((list(messages), params))
        if params.answer_prefix:
            yield params.answer_prefix
        yield from self.pieces


class FixedRouter:
    def route(self, text: str):  # type: ignore[no-untyped-def]
        from assistant.session import forced_choice

        return forced_choice("caregiving", None)


def test_session_applies_lead_passages_and_guard(tmp_path: Path) -> None:
    folder = tmp_path / "caregiving"
    entry(folder, "fall", "老人跌倒后的处理", "不要马上扶起，先看有没有头部受伤；头部受伤立即拨打120。")
    policy = AnswerPolicy(DRUGS, {"caregiving": KnowledgeIndex(HashingEncoder(), load_knowledge([folder]), 0.0)})
    engine = ScriptedEngine(["先让老人躺着。", "可以吃布洛芬止痛。", "观察意识。"])
    session = ChatSession(FixedRouter(), engine, system_prompt="sys", policy=policy)

    events = list(session.ask("老人摔倒了头磕到了怎么办"))

    answer = "".join(e.text for e in events if isinstance(e, Token))
    done = next(e for e in events if isinstance(e, Done))
    assert answer.startswith("⚠️") and "120" in answer[:40]
    assert "布洛芬" not in answer and "观察意识。" in answer and done.withheld == 1
    assert [p.entry.id for p in done.sources] == ["fall"]
    user_turn = engine.calls[0][0][-1].content
    assert user_turn == context_turn("老人摔倒了头磕到了怎么办", done.sources, "zh")
    assert session.history[-2].content == "老人摔倒了头磕到了怎么办"  # history keeps the user's own words


def test_live_questions_never_reach_the_model() -> None:
    engine = ScriptedEngine(["今天晴，20℃。"])
    session = ChatSession(FixedRouter(), engine, policy=AnswerPolicy(DRUGS))
    events = list(session.ask("今天天气怎么样"))
    assert engine.calls == []
    answer = "".join(e.text for e in events if isinstance(e, Token))
    assert "20℃" not in answer and "实时" in answer


def test_ask_json_names_the_sources_and_withheld_sentences(tmp_path: Path) -> None:
    import io
    import json

    from assistant.scripting import Query, run_ask

    folder = tmp_path / "caregiving"
    entry(folder, "turning", "卧床老人翻身", "大约每2小时翻身一次。")
    policy = AnswerPolicy(DRUGS, {"caregiving": KnowledgeIndex(HashingEncoder(), load_knowledge([folder]), 0.0)})
    engine = ScriptedEngine(["大约每2小时翻身一次。", "可配合阿司匹林。"])
    session = ChatSession(FixedRouter(), engine, policy=policy, keep_history=False)
    out, err = io.StringIO(), io.StringIO()

    code = run_ask(session, [Query(1, "卧床老人多久翻一次身")], True, out, err)

    record = json.loads(out.getvalue())
    assert code == 0 and record["sources"][0]["id"] == "turning" and record["withheld"] == 1
    assert "阿司匹林" not in record["answer"] and record["sources"][0]["source"] == "测试来源"


def test_a_question_about_the_assistant_starts_in_character_without_passages(tmp_path: Path) -> None:
    from assistant.session import forced_choice

    class AboutRouter:
        def route(self, text: str):  # type: ignore[no-untyped-def]
            return forced_choice("caregiving", None, about_assistant=True)

    folder = tmp_path / "caregiving"
    entry(folder, "fall", "老人跌倒后的处理", "不要马上扶起。")
    policy = AnswerPolicy(DRUGS, {"caregiving": KnowledgeIndex(HashingEncoder(), load_knowledge([folder]), 0.999)})
    engine = ScriptedEngine(["由上海颐家打造。"])
    session = ChatSession(AboutRouter(), engine, policy=policy, answer_prefix=lambda q: "我是颐家小助手，")

    events = list(session.ask("你是谁"))

    answer = "".join(e.text for e in events if isinstance(e, Token))
    assert answer == "我是颐家小助手，由上海颐家打造。"
    assert engine.calls[0][0][-1].content == "你是谁"  # no passages, no nothing-found note
    assert next(e for e in events if isinstance(e, Done)).sources == ()
