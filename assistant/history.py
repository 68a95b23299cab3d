"""The conversation store: every chat turn with its route, kept in a SQLite database (WAL) under the data dir."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from assistant.config import data_dir
from assistant.engine import Message

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id      INTEGER PRIMARY KEY,
    title   TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         TEXT NOT NULL,
    route           TEXT,
    adapter         TEXT,
    confidence      REAL,
    routing         TEXT,               -- JSON: candidates, nearest examples, flags (for /why)
    created         TEXT NOT NULL,
    stopped         INTEGER NOT NULL DEFAULT 0,
    complete        INTEGER NOT NULL DEFAULT 1,  -- 0 while streaming; stays 0 if the app died mid-answer
    error           TEXT,
    reply_to        INTEGER             -- an answer's question (questions queued during loading come first)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
"""


def default_path() -> Path:
    """Where conversations live unless told otherwise."""
    return data_dir() / "history.sqlite3"


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredMessage:
    """One saved turn; `complete=False` means the app stopped before the answer finished."""

    id: int
    conversation_id: int
    role: str
    content: str
    route: str | None = None
    adapter: str | None = None
    confidence: float | None = None
    routing: dict[str, Any] | None = None
    created: str = ""
    stopped: bool = False
    complete: bool = True
    error: str | None = None
    reply_to: int | None = None

    @property
    def interrupted(self) -> bool:
        """Stopped by the user, cut by a failure, or left unfinished by a killed app."""
        return self.stopped or not self.complete


@dataclass(frozen=True)
class ConversationSummary:
    """A line of `/history`."""

    id: int
    title: str
    created: str
    updated: str
    message_count: int


class HistoryStore:
    """Thread-safe conversation store; the generation thread writes partial answers while the UI reads."""

    def __init__(self, path: Path | None = None, clock: Callable[[], str] = _now) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        # Autocommit: every write is durable on its own, so a killed app loses at most the write in flight.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives an app crash
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "reply_to" not in columns:  # a version-1 database
                self._db.execute("ALTER TABLE messages ADD COLUMN reply_to INTEGER")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

    def create(self, title: str = "") -> int:
        """Start a conversation and return its id."""
        now = self._clock()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO conversations (title, created, updated) VALUES (?, ?, ?)", (_title(title), now, now)
            )
        return int(cur.lastrowid or 0)

    def list_conversations(self, limit: int = 200) -> list[ConversationSummary]:
        """Conversations, most recently updated first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.title, c.created, c.updated, COUNT(m.id) AS n FROM conversations c "
                "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id "
                "ORDER BY c.updated DESC, c.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [ConversationSummary(r["id"], r["title"], r["created"], r["updated"], r["n"]) for r in rows]

    def latest(self) -> int | None:
        """The most recently updated conversation that has messages, if any."""
        for summary in self.list_conversations(limit=20):
            if summary.message_count:
                return summary.id
        return None

    def title(self, conversation_id: int) -> str:
        """A conversation's title ('' when unknown)."""
        with self._lock:
            row = self._db.execute("SELECT title FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return str(row["title"]) if row else ""

    def load(self, conversation_id: int) -> list[StoredMessage]:
        """Every message of a conversation, each answer right after its question."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY COALESCE(reply_to, id), id",
                (conversation_id,),
            ).fetchall()
        return [_message(r) for r in rows]

    def append(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        route: str | None = None,
        adapter: str | None = None,
        confidence: float | None = None,
        routing: dict[str, Any] | None = None,
        complete: bool = True,
        reply_to: int | None = None,
    ) -> int:
        """Add a message, return its id; an answer's `reply_to` is its question (answers to questions
        queued during loading are written after all of them; `load` puts each back in place)."""
        now = self._clock()
        blob = json.dumps(routing, ensure_ascii=False) if routing is not None else None
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, route, adapter, confidence, routing, created,"
                " complete, reply_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, route, adapter, confidence, blob, now, int(complete), reply_to),
            )
            self._db.execute(
                "UPDATE conversations SET updated = ?,"
                " title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END WHERE id = ?",
                (now, role, _title(content), conversation_id),
            )
        return int(cur.lastrowid or 0)

    def update_partial(self, message_id: int, content: str) -> None:
        """Save the answer streamed so far (called periodically while generating)."""
        with self._lock:
            self._db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))

    def finish(
        self,
        message_id: int,
        content: str,
        *,
        stopped: bool = False,
        error: str | None = None,
        routing: dict[str, Any] | None = None,
    ) -> None:
        """Save the final answer and mark it complete (stopped by the user, or cut short by `error`).

        `routing`, when given, replaces the saved routing record (it gains what is known only at the
        end: the knowledge sources the answer was given).
        """
        with self._lock:
            self._db.execute(
                "UPDATE messages SET content = ?, stopped = ?, complete = 1, error = ? WHERE id = ?",
                (content, int(stopped or error is not None), error, message_id),
            )
            if routing is not None:
                blob = json.dumps(routing, ensure_ascii=False)
                self._db.execute("UPDATE messages SET routing = ? WHERE id = ?", (blob, message_id))

    def delete_message(self, message_id: int) -> None:
        """Forget one message (a question whose answer failed before it began goes back to the prompt)."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as a Markdown document, each answer with its route badge."""
        title = self.title(conversation_id) or f"Conversation {conversation_id}"
        lines = [f"# {title}", ""]
        for m in self.load(conversation_id):
            if m.role == "user":
                lines += ["## You", "", m.content, ""]
            elif m.role == "assistant":
                lines += [f"## Assistant — {answer_label(m)}", "", m.content or "_(no text)_", ""]
                if m.error:
                    lines += [f"_(failed: {m.error})_", ""]
                elif m.stopped:
                    lines += ["_(stopped)_", ""]
                elif not m.complete:
                    lines += ["_(interrupted: the app closed mid-answer)_", ""]
        return "\n".join(lines).rstrip() + "\n"


def answer_label(m: StoredMessage) -> str:
    """`route · adapter · 95%`, the words the TUI badge shows."""
    parts = [m.route or "?", f"adapter {m.adapter}" if m.adapter else "base"]
    if m.routing and m.routing.get("forced"):
        parts.append("forced")
    elif m.confidence is not None:
        parts.append(f"{m.confidence:.0%}")
    return " · ".join(parts)


def session_history(messages: Sequence[StoredMessage]) -> list[Message]:
    """The engine-side history of a saved conversation: each question with the answer that followed it."""
    out: list[Message] = []
    for question, answer in itertools.pairwise(messages):
        if question.role == "user" and answer.role == "assistant" and answer.content:
            out += [Message("user", question.content), Message("assistant", answer.content)]
    return out


def last_route(messages: Sequence[StoredMessage]) -> tuple[str, str | None] | None:
    """(route, adapter) of the last routed answer, so a reopened chat stays sticky."""
    for message in reversed(messages):
        if message.role == "assistant" and message.route:
            return message.route, message.adapter
    return None


def _title(text: str, width: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _message(row: sqlite3.Row) -> StoredMessage:
    values = dict(row)  # column names match the dataclass fields
    values["routing"] = json.loads(values["routing"]) if values["routing"] else None
    values["stopped"], values["complete"] = bool(values["stopped"]), bool(values["complete"])
    return StoredMessage(**values)
