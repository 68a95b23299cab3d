"""The live-data detector: its data, fitting and cache, the threshold, the policy's lead, and the recognition eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from assistant.answer_policy import AnswerPolicy
from assistant.care_rules import classify
from assistant.live_data_signs import (
    EXAMPLES_FILE,
    FALSE_ALARM_LIMIT,
    LIVE,
    OTHER,
    LiveDataSigns,
    choose_threshold,
    detector_examples,
    load_examples,
    load_or_fit_live_data_signs,
)
from data.errors import BadInputFile
from data.labels import GENERAL, Example
from measurement.eval_emergency import load_recognition_probe, score_recognition
from tests.fakes import HashingEncoder, stored_classifier

ASKS_NOW = ["外头现在落雨伐", "外头现在落雪伐", "外头现在刮风伐", "外头现在出太阳伐"]
CARE = ["怎么给老人洗澡比较安全", "老人便秘怎么办", "老人晚上睡不着怎么办", "推荐几道适合老人的菜"]
EXAMPLES = [Example(t, LIVE) for t in ASKS_NOW * 2] + [Example(t, OTHER) for t in CARE * 2]
#: Not caught by the LIVE regex (checked in the tests), but close in form to ASKS_NOW.
UNSEEN_LIVE = "外头现在落冰雹伐"


def fitted_detector(encoder: HashingEncoder, threshold: float = 0.5) -> LiveDataSigns:
    return LiveDataSigns(stored_classifier(encoder, EXAMPLES), encoder, threshold)


def test_detector_fits_flags_and_is_cached() -> None:
    encoder = HashingEncoder()
    detector = load_or_fit_live_data_signs(encoder, EXAMPLES, log=lambda s: None)
    assert detector.flags(UNSEEN_LIVE)
    assert not detector.flags("老人便秘了怎么办")
    assert detector.cv is not None and detector.cv["cv_false_alarms"] <= FALSE_ALARM_LIMIT
    assert detector.cv["false_alarm_limit"] == FALSE_ALARM_LIMIT  # so a changed limit chooses again

    def refit(message: str) -> None:
        raise AssertionError(f"the cached detector was refitted: {message}")

    again = load_or_fit_live_data_signs(encoder, EXAMPLES, log=refit)
    assert again.stored.fingerprint == detector.stored.fingerprint
    assert again.threshold == detector.threshold and again.cv == detector.cv


def test_threshold_is_the_lowest_that_keeps_false_alarms_within_the_limit() -> None:
    negatives = np.linspace(0.0, 0.59, 200)  # one in 200 at or above 0.59, two at or above 0.58
    scores = np.concatenate([np.array([0.95, 0.7, 0.5]), negatives])
    is_live = np.array([True] * 3 + [False] * 200)
    assert choose_threshold(scores, is_live, limit=0.005) == 0.59
    assert choose_threshold(scores, is_live, limit=0.0) == 0.6
    assert choose_threshold(scores, is_live, limit=1.0) == 0.3  # the lowest on the grid


def test_routing_questions_of_both_routes_are_negatives_unless_the_regex_flags_them() -> None:
    routing = [
        Example("老人腿肿怎么办", "caregiving"),
        Example("写一首诗", GENERAL),
        Example("今天天气怎么样", GENERAL),  # the LIVE regex flags it: left out
        Example(ASKS_NOW[0], GENERAL),  # already written: kept once, with its own label
    ]
    combined = detector_examples(EXAMPLES, routing)
    assert combined[: len(EXAMPLES)] == EXAMPLES
    assert [(e.text, e.label) for e in combined[len(EXAMPLES) :]] == [("老人腿肿怎么办", OTHER), ("写一首诗", OTHER)]


def test_examples_file_is_bilingual_and_labelled(tmp_path: Path) -> None:
    examples = load_examples()
    rows = [json.loads(line) for line in EXAMPLES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(examples) == len(rows) >= 400
    for label in (LIVE, OTHER):
        for lang in ("zh", "en"):
            assert sum(r["label"] == label and r["lang"] == lang for r in rows) >= 90
    assert len({r["text"] for r in rows}) == len(rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "live"}\n{"text": "b", "label": "now"}\n', encoding="utf-8")
    with pytest.raises(BadInputFile, match=r"bad\.jsonl:2: label 'now'"):
        load_examples(bad)


def test_policy_answers_by_the_rule_alone_when_only_the_detector_fires() -> None:
    assert not classify(UNSEEN_LIVE).live  # the regex alone misses it
    prepared = AnswerPolicy([], live=fitted_detector(HashingEncoder())).prepare(UNSEEN_LIVE, "general")
    assert prepared.asks.live and prepared.asks.live_by_meaning
    assert prepared.lead is not None and prepared.lead.complete
    assert prepared.lead.text.startswith("我无法获取实时信息")

    without = AnswerPolicy([]).prepare(UNSEEN_LIVE, "general")
    assert not without.asks.live and without.lead is None


def test_policy_keeps_the_regex_as_the_floor_and_stays_quiet_on_care_questions() -> None:
    never = fitted_detector(HashingEncoder(), threshold=1.01)  # a detector that never fires
    by_regex = AnswerPolicy([], live=never).prepare("what time is it", "general")
    assert by_regex.asks.live and not by_regex.asks.live_by_meaning
    assert by_regex.lead is not None and by_regex.lead.complete
    quiet = AnswerPolicy([], live=fitted_detector(HashingEncoder())).prepare("老人便秘怎么办", "general")
    assert not quiet.asks.live and quiet.lead is None


def test_live_recognition_eval_counts_recall_and_false_flags(tmp_path: Path) -> None:
    probe = tmp_path / "probe.jsonl"
    lines = [
        {"question": UNSEEN_LIVE, "kind": "live"},
        {"question": "what time is it", "kind": "live"},
        {"question": "老人便秘怎么办", "kind": "none"},
        {"question": "推荐几道适合老人的菜", "kind": "medicine"},
    ]
    probe.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    rules, combined = score_recognition(load_recognition_probe(probe), fitted_detector(HashingEncoder()), "live")
    assert (rules.caught, rules.emergencies, rules.false_alarms, rules.others) == (1, 2, 0, 2)
    assert (combined.caught, combined.false_alarms) == (2, 0)
    assert rules.missed == [UNSEEN_LIVE]


#: Written for this test (not in the examples file nor any probe): live questions in new words,
#: and care questions that mention the weather or the time but ask for guidance.
PARAPHRASED_LIVE = [
    "阿爷要出去兜一圈，外头这歇辰光落雨伐",
    "今朝外头温度高伐，阿娘想去菜场",
    "is it pouring outside at the moment? grandad wants his stroll",
    "is the neighbourhood clinic open on new year's day this year",
    "what's the smog like out there this morning",
]
CARE_NEGATIVES = [
    "黄梅天老人房间潮湿，怎么防霉",
    "老人晚饭后多久可以吃降压药",
    "what should my mother drink on very hot days",
    "how can I tell if dad is too cold at night",
    "how do I find out when the day centre is open",
]


@pytest.mark.slow
def test_real_encoder_recognises_paraphrased_live_questions() -> None:
    from adapters.bundled_encoder import prepare_bundled_encoder
    from adapters.fast_encoder import FastE5Encoder
    from adapters.wiring import routing_files
    from assistant.config import Settings
    from data.labels import load_labelled

    path = prepare_bundled_encoder()
    encoder = FastE5Encoder(path, name=f"bundled:{path.name}", threads=1)  # the published model, as search uses
    routing = load_labelled(routing_files(Settings()))
    policy = AnswerPolicy([], live=load_or_fit_live_data_signs(encoder, routing=routing))  # as build_policy fits it
    caught = [q for q in PARAPHRASED_LIVE if policy.prepare(q, "general").asks.live]
    assert len(caught) >= 4, caught
    flagged = [q for q in CARE_NEGATIVES if policy.prepare(q, "general").asks.live]
    assert flagged == []
