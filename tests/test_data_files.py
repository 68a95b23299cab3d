"""Labelled-data loading, identity facts and settings: good files load, bad ones name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import Settings, load_settings
from assistant.errors import BadInputFile, UsageError
from data.identity import load_identity
from data.labels import ROUTING_DIR, load_labelled, load_labelled_file


def test_seed_file_parses_with_numeric_labels() -> None:
    examples = load_labelled_file(ROUTING_DIR / "seed.txt")
    assert len(examples) == 328
    assert {e.label for e in examples} == {"general", "caregiving"}
    assert sum(e.label == "caregiving" for e in examples) == 89


def test_jsonl_and_seed_formats(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "老人护理", "label": 1}\n\n{"text": "你好", "label": "general"}\n', encoding="utf-8")
    assert [(e.text, e.label) for e in load_labelled_file(f)] == [("老人护理", "caregiving"), ("你好", "general")]


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (b'{"text": "a", "label": "general"}\n{"text": broken\n', 2, "invalid JSON"),
        (b'{"text": "a"}\n', 1, '"label"'),
        (b"0 ok\n\xff\xfe\n", 2, "UTF-8"),
        (b"justoneword\n", 1, "LABEL TEXT"),
    ],
)
def test_bad_labelled_file_names_file_and_line(tmp_path: Path, content: bytes, line: int, problem: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    with pytest.raises(BadInputFile) as info:
        load_labelled_file(f)
    assert info.value.line == line and info.value.path == str(f)
    assert problem in str(info.value) and f"bad.jsonl:{line}" in str(info.value)


def test_heldout_folder_is_not_training_data(tmp_path: Path) -> None:
    (tmp_path / "heldout").mkdir()
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "general"}\n', encoding="utf-8")
    (tmp_path / "heldout" / "v.jsonl").write_text('{"text": "b", "label": "general"}\n', encoding="utf-8")
    assert [e.text for e in load_labelled([tmp_path])] == ["a"]


def test_identity_facts_and_system_prompt() -> None:
    identity = load_identity()
    assert identity.organisation_zh == "上海颐家"
    prompt = identity.system_prompt()
    assert identity.name_zh in prompt and "上海颐家" in prompt


def test_settings_reject_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('base = "/models/x"\nquantization = "bf16"\nmax_new_tokens = 64\n', encoding="utf-8")
    s = load_settings(good)
    assert (s.base, s.quantization, s.max_new_tokens) == ("/models/x", "bf16", 64)
    bad = tmp_path / "bad.toml"
    bad.write_text('bsae = "typo"\n', encoding="utf-8")
    with pytest.raises(BadInputFile, match="bsae"):
        load_settings(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("base = \n", encoding="utf-8")
    with pytest.raises(BadInputFile, match=r"broken\.toml"):
        load_settings(broken)
    with pytest.raises(UsageError):
        Settings(quantization="3bit")
    assert Settings().with_overrides(base=None, device="cpu").device == "cpu"
