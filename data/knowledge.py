"""The care knowledge base: short reviewed entries (Markdown with a YAML header), one file each, per route."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from data import DATA_DIR
from data.errors import BadInputFile

KNOWLEDGE_DIR = DATA_DIR / "knowledge"
REQUIRED = ("id", "title", "title_en", "source")
_SECTION = re.compile(r"^##\s*(中文|English)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class KnowledgeEntry:
    """One entry: what it is about, where its content comes from, and its text in both languages."""

    id: str
    title: str
    title_en: str
    source: str
    text_zh: str
    text_en: str
    path: str
    tags: tuple[str, ...] = ()

    def title_in(self, lang: str) -> str:
        return self.title if lang == "zh" else self.title_en

    def text_in(self, lang: str) -> str:
        """The text in `lang`, or the other language's when this entry lacks one."""
        text = self.text_zh if lang == "zh" else self.text_en
        return text or self.text_en or self.text_zh


def read_entry(path: Path) -> KnowledgeEntry:
    """Parse one entry file; a malformed one raises BadInputFile naming the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputFile(str(path), None, f"unreadable: {exc}") from None
    if not text.startswith("---"):
        raise BadInputFile(str(path), 1, "expected a YAML header between '---' lines")
    end = text.find("\n---", 3)
    if end < 0:
        raise BadInputFile(str(path), 1, "the YAML header is not closed with '---'")
    try:
        header = yaml.safe_load(text[3:end])
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInputFile(str(path), mark.line + 2 if mark else None, f"bad YAML header: {exc}") from None
    if not isinstance(header, dict):
        raise BadInputFile(str(path), 1, "the header must be a YAML mapping")
    missing = [k for k in REQUIRED if not str(header.get(k) or "").strip()]
    if missing:
        raise BadInputFile(str(path), 1, f"missing header key(s): {', '.join(missing)}")
    body = text[end + 4 :]
    sections = _sections(body)
    if not sections:
        raise BadInputFile(str(path), None, "no '## 中文' or '## English' section")
    tags = header.get("tags") or []
    return KnowledgeEntry(
        id=str(header["id"]).strip(),
        title=str(header["title"]).strip(),
        title_en=str(header["title_en"]).strip(),
        source=str(header["source"]).strip(),
        text_zh=sections.get("中文", ""),
        text_en=sections.get("English", ""),
        path=str(path),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (str(tags),),
    )


def _sections(body: str) -> dict[str, str]:
    marks = list(_SECTION.finditer(body))
    out = {}
    for i, mark in enumerate(marks):
        stop = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        content = body[mark.end() : stop].strip()
        if content:
            out[mark.group(1)] = content
    return out


def load_knowledge(folders: Iterable[Path]) -> list[KnowledgeEntry]:
    """Every entry in the given folders (missing folders hold none).

    Ids are unique within a folder; an entry in a later folder replaces the same id from an earlier
    one (an adapter's own knowledge/ may update the product's entries).
    """
    entries: dict[str, KnowledgeEntry] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        here: dict[str, str] = {}
        for path in sorted(Path(folder).glob("*.md")):
            if path.name.upper() == "README.MD":
                continue
            entry = read_entry(path)
            if entry.id in here:
                raise BadInputFile(str(path), 1, f"id {entry.id!r} is already used by {here[entry.id]}")
            here[entry.id] = str(path)
            entries[entry.id] = entry
    return list(entries.values())


def knowledge_folders(route: str, adapter_path: str | None = None) -> list[Path]:
    """Where a route's entries live: data/knowledge/ROUTE/ and the adapter folder's own knowledge/."""
    folders = [KNOWLEDGE_DIR / route]
    if adapter_path:
        folders.append(Path(adapter_path) / "knowledge")
    return folders
