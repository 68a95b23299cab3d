"""Labelled routing examples: JSONL `{"text", "label"}` files and the seed's `LABEL TEXT` lines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from data import DATA_DIR
from data.errors import BadInputFile
from data.files import read_data_lines

ROUTING_DIR = DATA_DIR / "routing"
HELDOUT_DIR = ROUTING_DIR / "heldout"
GENERAL = "general"

#: The seed data's numeric labels.
NUMERIC_LABELS = {"0": GENERAL, "1": "caregiving"}


@dataclass(frozen=True)
class Example:
    """One labelled text and where it came from (for /why and error messages)."""

    text: str
    label: str
    source: str = ""


def _label(value: object, path: Path, line: int) -> str:
    label = str(value).strip()
    label = NUMERIC_LABELS.get(label, label)
    if not label or not label.replace("_", "").replace("-", "").isalnum():
        raise BadInputFile(str(path), line, f"bad label {value!r}", "a label is a route name such as 'general'")
    return label


def load_labelled_file(path: Path) -> list[Example]:
    """Read one labelled file; JSONL when lines start with `{`, else seed-style `LABEL TEXT`."""
    examples: list[Example] = []
    for number, stripped, obj in read_data_lines(path):
        if obj is not None:
            if "text" not in obj or "label" not in obj:
                raise BadInputFile(str(path), number, 'expected an object with "text" and "label"')
            text, label = str(obj["text"]).strip(), _label(obj["label"], path, number)
        else:
            label_part, _, text = stripped.partition(" ")
            if not text.strip():
                raise BadInputFile(
                    str(path), number, "expected `LABEL TEXT`", 'or a JSON line {"text": ..., "label": ...}'
                )
            label, text = _label(label_part, path, number), text.strip()
        if text:
            examples.append(Example(text=text, label=label, source=f"{path.name}:{number}"))
    return examples


def labelled_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders to their top-level .jsonl/.txt files (sub-folders such as heldout/ are skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".jsonl", ".txt"))
        elif path.is_file():
            files.append(path)
        else:
            raise BadInputFile(str(path), None, "no such file or folder")
    return files


def load_labelled(paths: Iterable[Path]) -> list[Example]:
    """All examples of the given files/folders, de-duplicated by text (first label wins)."""
    seen: set[str] = set()
    out: list[Example] = []
    for file in labelled_files(paths):
        for example in load_labelled_file(file):
            if example.text not in seen:
                seen.add(example.text)
                out.append(example)
    return out
