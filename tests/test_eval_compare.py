"""`eval compare`: its question file and its Markdown, without a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.errors import UsageError
from measurement.eval_compare import _questions, markdown


def test_questions_come_from_question_or_prompt_and_a_bad_line_is_named(tmp_path: Path) -> None:
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": " a "}\n{"prompt": "b"}\n{"question": "c"}\n', encoding="utf-8")
    assert _questions(good, 0) == ["a", "b", "c"] and _questions(good, 2) == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n{"answer": "x"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad\.jsonl:2"):
        _questions(bad, 0)


def test_markdown_puts_every_column_under_each_question_with_its_sources() -> None:
    columns = [("base", [("答一", []), ("答二", [])]), ("new (caregiving)", [("答三", ["falls"]), ("答四", [])])]
    text = markdown(["问一", "问二"], columns)
    first, second = text.split("## 2. 问二")
    assert "## 1. 问一" in first and "**base**\n\n答一" in first and "**new (caregiving)** — sources: falls" in first
    assert "答二" in second and "答四" in second and "答一" not in second
