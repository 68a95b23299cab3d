"""data.files: lines, JSON Lines and YAML read with the file and line named for every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.errors import BadInputFile
from data.files import read_data_lines, read_json_objects, read_lines, read_yaml
from training.identity_probe import load_probe
from training.post_eval import load_questions


def test_objects_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\r\n', encoding="utf-8")
    assert list(read_json_objects(path)) == [(1, {"a": 1}), (3, {"b": 2})]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b'{"a": 1}\n{"a": \n', 2, "invalid JSON"),
        (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object"),
        (b'{"a": 1}\n{"a": "\xff"}\n', 2, "not valid UTF-8"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, content: bytes, line: int, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(BadInputFile) as caught:
        list(read_json_objects(path))
    assert caught.value.line == line and message in str(caught.value) and "bad.jsonl" in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BadInputFile, match=r"missing\.txt"):
        read_lines(tmp_path / "missing.txt")


def test_probe_and_sample_questions_report_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "probe.jsonl"
    path.write_text('{"question": "你是谁", "lang": "zh"}\n{"lang": "en"}\n', encoding="utf-8")
    with pytest.raises(BadInputFile) as caught:
        load_probe(path)
    assert caught.value.line == 2
    path.write_text('{"prompt": "老人便秘怎么办", "response": "多喝水"}\n{"answer": "x"}\n', encoding="utf-8")
    with pytest.raises(BadInputFile) as caught:
        load_questions(path, 5)
    assert caught.value.line == 2


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("r: 8\nalpha: [16\n", encoding="utf-8")
    with pytest.raises(BadInputFile) as caught:
        read_yaml(path)
    assert "recipe.yaml" in str(caught.value) and caught.value.line is not None and caught.value.line >= 2
    path.write_bytes(b"r: \xff\n")
    with pytest.raises(BadInputFile, match="cannot read"):
        read_yaml(path)
    path.write_text("", encoding="utf-8")
    assert read_yaml(path) is None


def test_data_lines_skip_comments_and_parse_json_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text('# comment\n\n1 老人摔倒了\n{"text": "你好", "label": 0}\n', encoding="utf-8")
    assert list(read_data_lines(path)) == [
        (3, "1 老人摔倒了", None),
        (4, '{"text": "你好", "label": 0}', {"text": "你好", "label": 0}),
    ]
    path.write_text('1 ok\n{"text": \n', encoding="utf-8")
    with pytest.raises(BadInputFile) as caught:
        list(read_data_lines(path))
    assert caught.value.line == 2 and "invalid JSON" in str(caught.value)
