"""Grounded training data: parsing, passages with distractors in the product's layout, and a tiny grounded run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.answer_policy import context_turn
from assistant.config import Settings
from assistant.errors import UsageError
from assistant.knowledge import Passage
from data.errors import BadInputFile
from data.knowledge import load_knowledge
from data.sft import load_sft_file
from tests.fakes import HashingEncoder
from tests.tiny_models import build_tiny_qwen2
from training.config import TrainConfig
from training.grounding import ground_samples
from training.job_inputs import AdapterJob

ENTRIES = {
    "turning": ("卧床老人翻身", "大约每两小时翻身一次，检查受压部位。"),
    "feeding": ("喂食与吞咽", "坐直进食，小口慢喂。"),
    "fever": ("老人发热", "多喝水，观察精神状态。"),
}


def write_knowledge(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for slug, (title, text) in ENTRIES.items():
        (folder / f"{slug}.md").write_text(
            f"---\nid: {slug}\ntitle: {title}\ntitle_en: {slug}\nsource: 测试\n---\n## 中文\n{text}\n", "utf-8"
        )
    return folder


def write_grounded(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_grounded_lines_get_their_entries_and_a_distractor_in_the_product_layout(tmp_path: Path) -> None:
    entries = load_knowledge([write_knowledge(tmp_path / "k")])
    data = write_grounded(
        tmp_path / "g.jsonl",
        [
            {"question": "卧床老人多久翻一次身", "answer": "大约每两小时翻一次。", "entries": ["turning"]},
            {"prompt": "普通问题", "response": "普通回答"},
        ],
    )
    samples = load_sft_file(data)
    assert samples[0].grounded and samples[0].context == ("turning",) and not samples[1].grounded

    grounded = ground_samples(samples, entries, passages=2, seed=3)

    turn = grounded[0].prompt
    assert turn.endswith("问题：卧床老人多久翻一次身") and "大约每两小时翻身一次" in turn
    shown = [e for e in entries if e.text_zh in turn]
    assert len(shown) == 2 and "turning" in {e.id for e in shown}
    assert turn == context_turn("卧床老人多久翻一次身", [Passage(e, 1.0, "zh") for e in _in_order(shown, turn)], "zh")
    assert grounded[0].response == "大约每两小时翻一次。" and grounded[1] == samples[1]
    assert ground_samples(samples, entries, passages=2, seed=3) == grounded  # seeded: the same every run


def _in_order(shown: list, turn: str) -> list:  # type: ignore[type-arg]
    return sorted(shown, key=lambda e: turn.index(e.text_zh))


def test_an_unknown_entry_names_the_file_and_line(tmp_path: Path) -> None:
    entries = load_knowledge([write_knowledge(tmp_path / "k")])
    data = write_grounded(tmp_path / "g.jsonl", [{"question": "q", "answer": "a", "entries": ["nope"]}])
    with pytest.raises(BadInputFile) as caught:
        ground_samples(load_sft_file(data), entries)
    assert "g.jsonl" in str(caught.value) and "nope" in str(caught.value)


def test_grounded_data_without_knowledge_is_refused_before_training(tmp_path: Path) -> None:
    from training.job_inputs import preflight

    data = write_grounded(tmp_path / "g.jsonl", [{"question": "q", "answer": "a", "entries": ["turning"]}])
    settings = Settings(adapter_dirs=(tmp_path / "adapters",))
    with pytest.raises(UsageError, match="--knowledge"):
        preflight(AdapterJob("care", data, TrainConfig()), settings)


def test_a_grounded_run_ships_outside_entries_and_records_them(tmp_path: Path) -> None:
    from training.adapter_job import run_adapter_job

    knowledge = write_knowledge(tmp_path / "elsewhere")
    rows = [
        {"question": f"卧床老人{i}多久翻一次身", "answer": "大约每两小时翻一次。", "entries": ["turning"]}
        for i in range(8)
    ]
    data = write_grounded(tmp_path / "g.jsonl", rows)
    settings = Settings(base=str(build_tiny_qwen2(tmp_path / "base")), adapter_dirs=(tmp_path / "adapters",))
    config = TrainConfig().with_overrides(
        max_steps=1, batch_size=2, max_length=2048, identity=False, probe=False, val_fraction=0.25
    )
    job = AdapterJob("care", data, config, knowledge=knowledge, progress=False)

    manifest = run_adapter_job(job, settings, lambda m: None, encoder_factory=lambda s: HashingEncoder())

    shipped = settings.adapters_dir / "care" / "knowledge"
    assert sorted(p.name for p in shipped.iterdir()) == ["feeding.md", "fever.md", "turning.md"]
    assert manifest["knowledge"]["entries"] == 3 and manifest["knowledge"]["grounded_samples"] == 8
