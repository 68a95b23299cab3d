"""Identity: template expansion, the probe file and its judge, and the probe run (no model)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from data.identity import load_identity
from data.sft import load_sft_file
from training.identity_commands import export_identity
from training.identity_data import expand_identity, load_templates, sample_identity
from training.identity_probe import judge, load_probe, run_probe, summary


def _norm(text: str) -> str:
    return re.sub(r"[\s，。？！,.?!:：;；]+", "", text.lower())


def test_expansion_covers_every_intent_in_both_languages() -> None:
    pairs = expand_identity()
    assert len(pairs) >= 300
    groups = Counter((p.intent, p.lang) for p in pairs)
    intents = set(load_templates()["intents"])
    assert {(i, lang) for i in intents for lang in ("zh", "en")} <= set(groups)
    questions = {_norm(p.question) for p in pairs}
    for must in ("你是谁", "你叫什么", "介绍一下你自己", "上海颐家是做什么的", "whoareyou", "whomadeyou"):
        assert must in questions, must
    assert len({p.question for p in pairs}) == len(pairs), "duplicate questions"


def test_every_training_answer_passes_the_probe_judge() -> None:
    identity = load_identity()
    for pair in expand_identity():
        ok, why = judge(pair.answer)
        assert ok, (pair.question, pair.answer, why)
        assert "{" not in pair.answer, "unfilled placeholder"
    # The answers come from the facts file, not from the templates.
    assert any(identity.description_zh.split()[0][:10] in p.answer for p in expand_identity())


def test_balanced_sample_is_deterministic_and_spread() -> None:
    pairs = expand_identity()
    sample = sample_identity(pairs, 56, seed=3)
    assert sample == sample_identity(pairs, 56, seed=3)
    groups = Counter((p.intent, p.lang) for p in sample)
    assert max(groups.values()) - min(groups.values()) <= 1
    assert len(sample) == 56 and len(set(sample)) == 56


def test_probe_is_large_bilingual_and_worded_unlike_the_templates() -> None:
    probe = load_probe()
    assert len(probe) >= 30
    langs = Counter(q.lang for q in probe)
    assert langs["zh"] >= 10 and langs["en"] >= 10
    trained = {_norm(p.question) for p in expand_identity()}
    overlap = [q.question for q in probe if _norm(q.question) in trained]
    assert not overlap, f"probe questions also used for training: {overlap}"


@pytest.mark.parametrize(
    ("answer", "passes"),
    [
        ("我是颐家小助手，由上海颐家打造。", True),
        ("I'm Yijia Assistant, built by Shanghai Yijia.", True),
        ("我是上海颐家的助手", True),
        ("Yijia is a company dedicated to home-based elder care.", True),  # 颐家 in English
        ("我是阿里云开发的通义千问。", False),
        ("I am Qwen, created by Alibaba Cloud.", False),
        ("我是颐家小助手，基于Qwen。", False),  # naming another model fails even next to our name
        ("I was trained by OpenAI.", False),
        ("我是一个AI助手。", False),
    ],
)
def test_judge(answer: str, passes: bool) -> None:
    assert judge(answer)[0] is passes


def test_run_probe_scores_each_route() -> None:
    probe = load_probe()[:4]

    def answers(questions: Sequence[str], adapter: str | None) -> list[str]:
        good = "我是颐家小助手。"
        return [good if adapter or i % 2 else "我是通义千问" for i, _ in enumerate(questions)]

    results = run_probe(answers, [("general", None), ("caregiving", "caregiving")], probe)
    assert summary(results) == {"general": 0.5, "caregiving": 1.0}
    assert len(results[0].failures) == 2 and "通义千问" in results[0].failures[0]["reason"]


def test_export_writes_loadable_training_data(tmp_path: Path) -> None:
    out = tmp_path / "identity.jsonl"
    assert export_identity(out, count=40) == 40
    samples = load_sft_file(out)
    assert len(samples) == 40 and all(judge(s.response)[0] for s in samples)
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
