"""Reading the project's data files (lines, JSON Lines, YAML): every problem names the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.errors import BadInputFile


def read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; a line that is not UTF-8 is named, not skipped."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputFile(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    out = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError:
            raise BadInputFile(str(path), number, "not valid UTF-8") from None
    return out


def read_data_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
    """(line number, stripped text, parsed object) for every line that is not blank or a # comment.

    A line starting with `{` is JSON and comes with its object; any other line comes with None
    (plain text, for the formats that allow it).
    """
    for number, line in enumerate(read_lines(path), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        obj = None
        if stripped.startswith("{"):
            try:
                obj = json.loads(stripped)  # valid JSON starting with `{` is always an object
            except json.JSONDecodeError as exc:
                raise BadInputFile(str(path), number, f"invalid JSON: {exc.msg}") from None
        yield number, stripped, obj


def read_json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file of objects."""
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputFile(str(path), number, f"invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise BadInputFile(str(path), number, "expected a JSON object")
        yield number, obj


def read_yaml(path: Path) -> Any:
    """The parsed YAML document (None when empty); unreadable or invalid YAML names the file and line."""
    import yaml  # lazy: `--help` and the router never pay for it

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise BadInputFile(str(path), None, f"cannot read: {reason}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInputFile(str(path), mark.line + 1 if mark else None, f"not valid YAML: {exc}") from None
