"""The detector of questions about the assistant: its training data, fitting, caching and the router flag."""

from __future__ import annotations

import numpy as np

from assistant.about_assistant import OTHER, SELF, detector_examples, load_or_fit_detector
from assistant.classifier import SoftmaxClassifier, StoredRouter
from assistant.router import GENERAL, Router
from data.identity import answer_language, load_identity
from data.identity_templates import identity_questions
from data.labels import Example
from tests.fakes import HashingEncoder

ROUTING = [
    Example("你是谁", GENERAL, "seed:1"),  # the seed labels this general; it must not become a negative
    Example("上海颐家的简介", GENERAL, "seed:2"),
    Example("今天天气怎么样", GENERAL, "seed:3"),
    Example("推荐一部电影", GENERAL, "seed:4"),
    Example("梅西率迈阿密国际夺冠", GENERAL, "seed:5"),
    Example("糖尿病患者的照护内容有哪些", "caregiving", "seed:6"),
    Example("How do I boil an egg?", GENERAL, "w:1"),
    Example("What is the capital of France?", GENERAL, "w:2"),
    Example("老人摔倒了怎么办", "caregiving", "w:3"),
    Example("Can you help me write an email?", GENERAL, "w:4"),
    Example("你会不会忘记我", GENERAL, "w:5"),  # its memory: near "what can you do", not a negative either
    Example("What kinds of questions can you answer?", GENERAL, "w:6"),
    Example("你能帮我翻译一句话吗", GENERAL, "w:7"),
    Example("小布小布 你会干什么", GENERAL, "w:8"),  # what it can do, as said to a voice assistant
    Example("you're useless lol", GENERAL, "w:9"),  # teasing is chit-chat, a fair negative
]


def test_examples_keep_questions_about_the_assistant_out_of_the_negatives() -> None:
    questions = ["你是谁？", "Who made you?"]
    examples = detector_examples(questions, ROUTING)
    positives = [e.text for e in examples if e.label == SELF]
    negatives = [e.text for e in examples if e.label == OTHER]
    assert positives == questions
    assert "你是谁" not in negatives and "上海颐家的简介" not in negatives
    assert "Can you help me write an email?" in negatives  # a request to the assistant is not about it
    assert "你能帮我翻译一句话吗" in negatives
    assert "你会不会忘记我" not in negatives and "What kinds of questions can you answer?" not in negatives
    assert "小布小布 你会干什么" not in negatives and "you're useless lol" in negatives
    assert len(negatives) == len(ROUTING) - 5


def test_template_questions_are_many_and_bilingual() -> None:
    questions = identity_questions()
    langs = {lang for _, _, lang in questions}
    assert langs == {"zh", "en"} and len(questions) >= 200
    assert len({q for q, _, _ in questions}) == len(questions)


QUESTIONS = ["你是谁？", "你叫什么名字？", "谁开发了你？", "Who made you?", "What is your name?", "介绍一下你自己"]


def test_detector_fits_flags_and_is_cached() -> None:
    encoder = HashingEncoder()
    questions = QUESTIONS
    detector = load_or_fit_detector(encoder, ROUTING, questions, log=lambda s: None)
    flags = detector.flags(encoder.encode(["你是谁？", "你叫什么名字？", "今天天气怎么样", "老人摔倒了怎么办"]))
    assert flags == [True, True, False, False]

    def refit(message: str) -> None:
        raise AssertionError(f"the cached detector was refitted: {message}")

    again = load_or_fit_detector(encoder, ROUTING, questions, log=refit)
    assert again.stored.fingerprint == detector.stored.fingerprint


def test_router_sets_the_flag_from_the_detector() -> None:
    encoder = HashingEncoder()
    detector = load_or_fit_detector(encoder, ROUTING, QUESTIONS, log=lambda s: None)
    x = encoder.encode([e.text for e in ROUTING])
    stored = StoredRouter(
        SoftmaxClassifier.fit(x, [e.label for e in ROUTING]),
        0.0,
        0.0,
        encoder.name,
        "fp",
        [e.text for e in ROUTING],
        [e.label for e in ROUTING],
        x.astype(np.float16),
    )
    router = Router(encoder, stored, {GENERAL: None, "caregiving": "caregiving"}, about=detector)
    who, care = router.route_many(["你是谁？", "老人摔倒了怎么办"])
    assert who.about_assistant and not care.about_assistant
    assert not Router(encoder, stored, {GENERAL: None}).route("你是谁？").about_assistant


def test_answer_prefix_follows_the_question_language() -> None:
    identity = load_identity()
    assert answer_language("你是谁") == "zh" and answer_language("Who are you?") == "en"
    assert identity.answer_prefix("你是谁？").startswith("我是" + identity.name_zh)
    assert identity.answer_prefix("who made you?") == f"I am {identity.name_en},"
