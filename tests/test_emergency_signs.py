"""The emergency-sign detector: its data, fitting and cache, the policy's lead, and the recognition eval."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from assistant.answer_policy import AnswerPolicy
from assistant.care_rules import classify
from assistant.emergency_signs import (
    EMERGENCY,
    EXAMPLES_FILE,
    OTHER,
    EmergencySigns,
    RepeatingEncoder,
    choose_threshold,
    load_examples,
    load_or_fit_emergency_signs,
    sentences,
)
from data.errors import BadInputFile
from data.labels import Example
from measurement.eval_emergency import load_recognition_probe, score_recognition
from tests.fakes import HashingEncoder, stored_classifier

BLEEDING = ["外婆腿上的血一直往外冒", "外婆手上的血一直往外冒", "外公脚上的血一直往外冒", "爷爷头上的血一直往外冒"]
CARE = ["怎么给老人洗澡比较安全", "老人便秘怎么办", "老人晚上睡不着怎么办", "推荐几道适合老人的菜"]
EXAMPLES = [Example(t, EMERGENCY) for t in BLEEDING * 2] + [Example(t, OTHER) for t in CARE * 2]
#: Not caught by the emergency regexes (checked in the test), but close in meaning to BLEEDING.
UNSEEN_BLEEDING = "奶奶腿上的血一直往外冒"


def fitted_detector(encoder: HashingEncoder, threshold: float = 0.5) -> EmergencySigns:
    return EmergencySigns(stored_classifier(encoder, EXAMPLES), encoder, threshold)


def test_detector_fits_flags_and_is_cached() -> None:
    encoder = HashingEncoder()
    detector = load_or_fit_emergency_signs(encoder, EXAMPLES, log=lambda s: None)
    assert detector.flags(UNSEEN_BLEEDING)
    assert not detector.flags("老人便秘了怎么办")
    assert detector.cv is not None and 0.0 <= detector.cv["cv_false_alarms"] <= 1.0

    def refit(message: str) -> None:
        raise AssertionError(f"the cached detector was refitted: {message}")

    again = load_or_fit_emergency_signs(encoder, EXAMPLES, log=refit)
    assert again.stored.fingerprint == detector.stored.fingerprint
    assert again.threshold == detector.threshold and again.cv == detector.cv


def test_a_sign_buried_in_a_long_message_is_scored_by_its_own_sentence() -> None:
    detector = fitted_detector(HashingEncoder())
    message = (
        "推荐几道适合老人的菜，我们今天买了很多鱼和青菜。我们下午去公园散步，晚上打算看电视。"
        f"{UNSEEN_BLEEDING}。老人晚上睡不着怎么办？"
    )
    whole = float(detector.scores(detector.encoder.encode([message]))[0])
    assert whole < detector.threshold <= detector.score(message)  # diluted as a whole, caught by its sentence
    assert detector.flags(message) and not detector.flags("推荐几道适合老人的菜。老人晚上睡不着怎么办？")
    assert sentences("Mum went out. Then she fell.\nok") == ["Mum went out.", "Then she fell."]
    assert [len(p) for p in sentences("好" * 450)] == [200, 200, 50]  # a run-on read in windows


def test_threshold_is_the_highest_that_keeps_the_recall() -> None:
    scores = np.array([0.9, 0.8, 0.42, 0.1, 0.3, 0.05])
    is_emergency = np.array([True, True, True, True, False, False])
    assert choose_threshold(scores, is_emergency, recall=0.75) == 0.4
    assert choose_threshold(scores, is_emergency, recall=1.0) == 0.1
    assert choose_threshold(scores, is_emergency, recall=0.5) == 0.8


def test_examples_file_is_bilingual_balanced_and_labelled(tmp_path: Path) -> None:
    examples = load_examples()
    rows = [json.loads(line) for line in EXAMPLES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(examples) == len(rows) >= 400
    for label in (EMERGENCY, OTHER):
        for lang in ("zh", "en"):
            assert sum(r["label"] == label and r["lang"] == lang for r in rows) >= 100
    assert len({r["text"] for r in rows}) == len(rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "emergency"}\n{"text": "b", "label": "urgent"}\n', encoding="utf-8")
    with pytest.raises(BadInputFile, match=r"bad\.jsonl:2: label 'urgent'"):
        load_examples(bad)


def test_policy_leads_with_the_emergency_when_only_the_detector_fires() -> None:
    assert not classify(UNSEEN_BLEEDING).emergency  # the regexes alone miss it
    encoder = HashingEncoder()
    with_detector = AnswerPolicy([], emergency=fitted_detector(encoder)).prepare(UNSEEN_BLEEDING, "general")
    assert with_detector.asks.emergency and with_detector.asks.emergency_by_meaning
    assert with_detector.lead is not None and with_detector.lead.text.startswith("⚠️ 这可能是急症：请立即拨打120")

    without = AnswerPolicy([]).prepare(UNSEEN_BLEEDING, "general")
    assert not without.asks.emergency and without.lead is None


def test_policy_keeps_the_rules_as_the_floor_and_stays_quiet_on_care_questions() -> None:
    never = fitted_detector(HashingEncoder(), threshold=1.01)  # a detector that never fires
    policy = AnswerPolicy([], emergency=never)
    stroke = policy.prepare("My dad's face is drooping and his speech is slurred", "general")
    assert stroke.asks.emergency and not stroke.asks.emergency_by_meaning
    assert stroke.lead is not None and stroke.lead.text.startswith("⚠️ This may be an emergency: call emergency")
    quiet = AnswerPolicy([], emergency=fitted_detector(HashingEncoder())).prepare("老人便秘怎么办", "general")
    assert not quiet.asks.emergency and quiet.lead is None


class CountingEncoder(HashingEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().encode(texts)


def test_repeating_encoder_encodes_a_question_once() -> None:
    inner = CountingEncoder()
    encoder = RepeatingEncoder(inner)
    first = encoder.encode(["老人摔倒了"])
    again = encoder.encode(["老人摔倒了"])
    assert np.array_equal(first, again) and inner.calls == [["老人摔倒了"]]
    encoder.encode(["另一个问题"])
    encoder.encode(["a", "b"])  # batches pass through
    assert inner.calls[1:] == [["另一个问题"], ["a", "b"]] and encoder.name == inner.name


def test_recognition_eval_counts_recall_and_false_alarms(tmp_path: Path) -> None:
    probe = tmp_path / "probe.jsonl"
    lines = [
        {"question": UNSEEN_BLEEDING, "kind": "emergency"},
        {"question": "My dad's face is drooping and his speech is slurred", "kind": "emergency"},
        {"question": "老人便秘怎么办", "kind": "none"},
        {"question": "阿司匹林一次吃几片", "kind": "dose"},
    ]
    probe.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    rules, combined = score_recognition(load_recognition_probe(probe), fitted_detector(HashingEncoder()))
    assert (rules.caught, rules.emergencies, rules.false_alarms, rules.others) == (1, 2, 0, 2)
    assert (combined.caught, combined.false_alarms) == (2, 0)
    assert rules.missed == [UNSEEN_BLEEDING]


#: Written for this test (not in the examples file nor any probe): danger signs in new words, and
#: questions that name the same conditions without an emergency happening.
PARAPHRASED_EMERGENCIES = [
    "我爸在饭桌上突然筷子掉了，一边嘴角往下耷拉，讲话含含糊糊",
    "婆婆手臂上的口子血一直渗，纱布包了三层还是红透了",
    "外婆刚才还好好的，现在喊她不太应，眼神发直，有点低烧",
    "爷爷讲两句话就要停下来大口喘气，嘴唇有点乌",
    "mum's left arm and jaw ache and she is pouring with sweat",
    "grandpa went quiet mid-sentence and now his words don't make sense",
    "dad fell off the step stool and banged his head, now he keeps throwing up",
    "nan has something stuck in her throat and can't make a sound",
]
#: Long-term care, questions about a condition in general, and past events. Mild complaints ("a
#: little dizzy on standing", "a small cut") are left out: the detector still flags about a quarter
#: of those (cross-validated), the price of leaning to recall.
HARD_NEGATIVES = [
    "中风病人回家后怎么做康复训练",
    "心梗有哪些常见症状，想提前了解一下",
    "我妈上个月摔过一跤，医生看过没事，怎么预防再摔",
    "how do I look after my father after his heart attack last year",
    "what exercises help someone recovering from a stroke",
    "tips for feeding an elderly parent who eats slowly",
]


@pytest.mark.slow
def test_real_encoder_recognises_paraphrased_danger_signs() -> None:
    from adapters.bundled_encoder import prepare_bundled_encoder
    from adapters.fast_encoder import FastE5Encoder
    from adapters.wiring import routing_files
    from assistant.config import Settings
    from data.labels import load_labelled

    path = prepare_bundled_encoder()
    encoder = FastE5Encoder(path, name=f"bundled:{path.name}", threads=1)  # the published model, as search uses
    routing = load_labelled(routing_files(Settings()))
    detector = load_or_fit_emergency_signs(encoder, routing=routing)  # as build_policy fits it
    policy = AnswerPolicy([], emergency=detector)
    missed = [q for q in PARAPHRASED_EMERGENCIES if not policy.prepare(q, "general").asks.emergency]
    assert missed == []
    alarmed = [q for q in HARD_NEGATIVES if policy.prepare(q, "general").asks.emergency]
    # The threshold keeps 99% cross-validated recall, and about a third of the written hard
    # negatives get the 120 line in cross-validation; which of these borderline ones does moves
    # with every refit on new routing data (at 0.30: "心梗有哪些常见症状" and a fall last month
    # already seen by a doctor). Most must stay quiet.
    assert len(alarmed) <= 2, alarmed


def test_a_threshold_chosen_by_another_recall_target_is_chosen_again(tmp_path: Path) -> None:
    from assistant.sign_detector import cached_figures

    path = tmp_path / "threshold.json"
    old = cached_figures(path, lambda: {"threshold": 0.55, "recall_target": 0.98})
    assert old["threshold"] == 0.55
    same = cached_figures(path, lambda: {"threshold": 0.1, "recall_target": 0.98}, expect={"recall_target": 0.98})
    assert same["threshold"] == 0.55  # the stored figures were chosen by the same rule: reused
    new = cached_figures(path, lambda: {"threshold": 0.3, "recall_target": 0.99}, expect={"recall_target": 0.99})
    assert new["threshold"] == 0.3
    assert cached_figures(path, lambda: {"threshold": 0.9})["threshold"] == 0.3  # and stored
