"""Supervised fine-tuning data: JSON Lines of {"messages": [...]} or {"prompt", "response"}, checked line by line."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.errors import BadInputFile

ROLES = ("system", "user", "assistant")
FORMAT_HINT = (
    'each line is {"messages": [{"role": "user", "content": ...}, ...]}, {"prompt": ..., "response": ...} '
    'or, with --knowledge, {"question": ..., "answer": ..., "entries": [knowledge entry ids]}'
)


@dataclass(frozen=True)
class SFTSample:
    """One conversation to learn from; `source` is "file:line" so problems can be traced back."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, in order
    source: str = ""
    kind: str = "domain"  # "domain" for the user's file, "identity" for generated identity pairs
    #: Knowledge entry ids the answer is grounded in (grounded lines only); training puts those
    #: entries, plus a distractor, into the user turn exactly as the product does at answer time.
    context: tuple[str, ...] = ()
    grounded: bool = False  # a {"question", "answer", "entries"} line: answered from knowledge passages

    def as_messages(self) -> list[dict[str, str]]:
        """The conversation as chat-template dicts."""
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def prompt(self) -> str:
        """The first user turn (what a router sees for this sample)."""
        return next((content for role, content in self.messages if role == "user"), "")

    @property
    def response(self) -> str:
        """The last assistant turn."""
        return next((content for role, content in reversed(self.messages) if role == "assistant"), "")


def sample_from_pair(prompt: str, response: str, source: str = "", kind: str = "domain") -> SFTSample:
    """A single-turn sample."""
    return SFTSample((("user", prompt), ("assistant", response)), source, kind)


def _text(value: object, what: str, path: Path, line: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInputFile(str(path), line, f"{what} must be a non-empty string", FORMAT_HINT)
    return value.strip()


def _messages(raw: object, path: Path, line: int) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise BadInputFile(str(path), line, '"messages" must be a non-empty list', FORMAT_HINT)
    out: list[tuple[str, str]] = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise BadInputFile(str(path), line, f'message {i + 1} needs "role" and "content"', FORMAT_HINT)
        role = turn["role"]
        if role not in ROLES:
            raise BadInputFile(str(path), line, f"message {i + 1} has role {role!r}", f"roles are {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise BadInputFile(str(path), line, "a system message may only come first")
        out.append((role, _text(turn["content"], f"message {i + 1} content", path, line)))
    if not any(role == "assistant" for role, _ in out):
        raise BadInputFile(str(path), line, "no assistant message: nothing to learn from this line")
    if not any(role == "user" for role, _ in out):
        raise BadInputFile(str(path), line, "no user message")
    return tuple(out)


def parse_sft_line(text: str, path: Path, line: int) -> SFTSample:
    """One JSON line -> a sample; anything malformed raises BadInputFile naming file and line."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputFile(str(path), line, f"invalid JSON: {exc.msg} (column {exc.colno})", FORMAT_HINT) from None
    if not isinstance(obj, dict):
        raise BadInputFile(str(path), line, f"expected a JSON object, got {type(obj).__name__}", FORMAT_HINT)
    source = f"{path.name}:{line}"
    if "messages" in obj:
        return SFTSample(_messages(obj["messages"], path, line), source)
    if "prompt" in obj or "response" in obj:
        prompt = _text(obj.get("prompt"), '"prompt"', path, line)
        response = _text(obj.get("response"), '"response"', path, line)
        turns: tuple[tuple[str, str], ...] = (("user", prompt), ("assistant", response))
        if obj.get("system") is not None:
            turns = (("system", _text(obj["system"], '"system"', path, line)), *turns)
        return SFTSample(turns, source)
    if "question" in obj or "answer" in obj:
        question = _text(obj.get("question"), '"question"', path, line)
        answer = _text(obj.get("answer"), '"answer"', path, line)
        entries = obj.get("entries", [])
        if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
            raise BadInputFile(str(path), line, '"entries" must be a list of knowledge entry ids', FORMAT_HINT)
        return SFTSample((("user", question), ("assistant", answer)), source, context=tuple(entries), grounded=True)
    raise BadInputFile(str(path), line, 'neither "messages" nor "prompt"/"response" found', FORMAT_HINT)


def load_sft_file(path: Path) -> list[SFTSample]:
    """Every sample of a JSONL file, or BadInputFile at the first bad line (so nothing half-loaded is trained)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInputFile(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    samples: list[SFTSample] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadInputFile(str(path), number, "not valid UTF-8") from None
        if text.startswith("\ufeff"):
            text = text[1:].strip()
        if text:  # blank lines (and the file's trailing newline) are allowed
            samples.append(parse_sft_line(text, path, number))
    if not samples:
        raise BadInputFile(str(path), None, "no samples", FORMAT_HINT)
    return samples


def write_sft_file(path: Path, samples: Iterable[SFTSample]) -> int:
    """Write samples as {"messages": [...]} lines; returns how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps({"messages": sample.as_messages()}, ensure_ascii=False) + "\n")
            count += 1
    return count


def samples_checksum(samples: Sequence[SFTSample]) -> str:
    """sha256 of the samples' content, independent of file formatting."""
    digest = hashlib.sha256()
    for sample in samples:
        for role, content in sample.messages:
            digest.update(f"{role}\x00{content}\x01".encode())
        digest.update(b"\x02")
    return digest.hexdigest()
