"""The SQLite conversation store: durable turns with their routes, listing, export, session restore."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from assistant.engine import Message
from assistant.history import HistoryStore, default_path, session_history

ROUTING = {"route": "caregiving", "adapter": "caregiving", "confidence": 0.95, "candidates": [], "forced": False}


def test_default_path_is_under_the_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "yijia-assistant" / "history.sqlite3"


def test_messages_keep_route_adapter_confidence_and_order(store: HistoryStore) -> None:
    cid = store.create()
    store.append(cid, "user", "糖尿病患者的照护内容有哪些？")
    aid = store.append(
        cid, "assistant", "", route="caregiving", adapter="caregiving", confidence=0.95, routing=ROUTING, complete=False
    )
    store.update_partial(aid, "饮食")
    store.finish(aid, "饮食、运动、用药")
    user, answer = store.load(cid)
    assert (user.role, user.content, user.route) == ("user", "糖尿病患者的照护内容有哪些？", None)
    assert (answer.content, answer.route, answer.adapter, answer.confidence) == (
        "饮食、运动、用药",
        "caregiving",
        "caregiving",
        0.95,
    )
    assert answer.routing == ROUTING and answer.complete and not answer.stopped and not answer.interrupted
    assert store.title(cid) == "糖尿病患者的照护内容有哪些？"  # the first question names it


def test_partial_answer_is_on_disk_before_it_finishes(store: HistoryStore, db_path: Path) -> None:
    cid = store.create()
    store.append(cid, "user", "q")
    aid = store.append(cid, "assistant", "", route="general", confidence=0.9, complete=False)
    store.update_partial(aid, "half an ans")
    # A second connection sees exactly what a killed process would leave behind.
    with sqlite3.connect(db_path) as other:
        row = other.execute("SELECT content, complete, stopped FROM messages WHERE id = ?", (aid,)).fetchone()
    assert row == ("half an ans", 0, 0)
    reopened = HistoryStore(db_path)
    try:
        assert reopened.load(cid)[-1].interrupted
    finally:
        reopened.close()


def test_wal_mode(store: HistoryStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stopped_and_failed_answers_are_marked(store: HistoryStore) -> None:
    cid = store.create()
    a = store.append(cid, "assistant", "", complete=False)
    b = store.append(cid, "assistant", "", complete=False)
    store.finish(a, "part", stopped=True)
    store.finish(b, "par", error="engine broke")
    first, second = store.load(cid)
    assert first.stopped and first.complete and first.error is None
    assert second.stopped and second.error == "engine broke"


def test_list_is_newest_first_with_counts(db_path: Path) -> None:
    ticks = iter(f"2025-11-25T10:00:{i:02d}+08:00" for i in range(60))
    store = HistoryStore(db_path, clock=lambda: next(ticks))
    try:
        old, new = store.create(), store.create()
        store.append(new, "user", "second conversation")
        store.append(old, "user", "first conversation")  # touching it makes it the newest
        store.append(old, "assistant", "answer")
        listed = store.list_conversations()
        assert [(c.id, c.title, c.message_count) for c in listed] == [
            (old, "first conversation", 2),
            (new, "second conversation", 1),
        ]
        assert store.latest() == old
    finally:
        store.close()


def test_latest_ignores_empty_conversations(store: HistoryStore) -> None:
    assert store.latest() is None
    store.create()
    assert store.latest() is None


def test_long_titles_are_shortened_to_one_line(store: HistoryStore) -> None:
    cid = store.create()
    store.append(cid, "user", "line one\nline two " + "x" * 100)
    title = store.title(cid)
    assert "\n" not in title and len(title) == 60 and title.endswith("…")


def test_export_markdown_has_badges_and_marks(store: HistoryStore) -> None:
    cid = store.create()
    store.append(cid, "user", "怎么照护？")
    a = store.append(cid, "assistant", "", route="caregiving", adapter="caregiving", confidence=0.95, complete=False)
    store.finish(a, "- 饮食\n- 运动")
    store.append(cid, "user", "梅西")
    b = store.append(cid, "assistant", "", route="general", confidence=0.9, complete=False)
    store.finish(b, "梅西是", stopped=True)
    store.append(cid, "user", "forced")
    store.append(cid, "assistant", "partial", route="general", confidence=1.0, routing={"forced": True}, complete=False)
    text = store.export_markdown(cid)
    assert text.startswith("# 怎么照护？\n")
    assert "## Assistant — caregiving · adapter caregiving · 95%\n\n- 饮食\n- 运动" in text
    assert "## Assistant — general · base · 90%\n\n梅西是\n\n_(stopped)_" in text
    assert "general · base · forced" in text and "_(interrupted: the app closed mid-answer)_" in text


def test_session_history_pairs_questions_with_their_answers(store: HistoryStore) -> None:
    cid = store.create()
    store.append(cid, "user", "q1")
    store.append(cid, "assistant", "a1")
    store.append(cid, "user", "unanswered (app killed before the first token)")
    store.append(cid, "assistant", "", complete=False)
    store.append(cid, "user", "q2")
    store.append(cid, "assistant", "a2 stopped half")
    store.append(cid, "user", "queued, never answered")
    assert session_history(store.load(cid)) == [
        Message("user", "q1"),
        Message("assistant", "a1"),
        Message("user", "q2"),
        Message("assistant", "a2 stopped half"),
    ]


def test_delete_message(store: HistoryStore) -> None:
    cid = store.create()
    mid = store.append(cid, "user", "oops")
    store.delete_message(mid)
    assert store.load(cid) == []


def test_writes_from_another_thread(store: HistoryStore) -> None:
    cid = store.create()
    ids: list[int] = []

    def writer() -> None:
        for i in range(50):
            ids.append(store.append(cid, "user", f"m{i}"))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load(cid)) == 200 and len(set(ids)) == 200


def test_answers_load_after_their_own_question(store: HistoryStore) -> None:
    cid = store.create()
    q1 = store.append(cid, "user", "q1")
    q2 = store.append(cid, "user", "q2")  # both typed while the model was loading
    store.append(cid, "assistant", "a1", reply_to=q1)
    store.append(cid, "assistant", "a2", reply_to=q2)
    assert [m.content for m in store.load(cid)] == ["q1", "a1", "q2", "a2"]
    assert [m.content for m in session_history(store.load(cid))] == ["q1", "a1", "q2", "a2"]


def test_version_1_database_is_upgraded(db_path: Path) -> None:
    with sqlite3.connect(db_path) as old:
        old.executescript(
            "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL DEFAULT '', created TEXT NOT NULL,"
            " updated TEXT NOT NULL);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL, role TEXT NOT NULL,"
            " content TEXT NOT NULL, route TEXT, adapter TEXT, confidence REAL, routing TEXT, created TEXT NOT NULL,"
            " stopped INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 1, error TEXT);"
            "INSERT INTO conversations VALUES (1, 't', 'x', 'x');"
            "INSERT INTO messages (conversation_id, role, content, created) VALUES (1, 'user', 'old', 'x');"
        )
    store = HistoryStore(db_path)
    try:
        assert [m.content for m in store.load(1)] == ["old"]
        store.append(1, "assistant", "new", reply_to=1)
        assert store.load(1)[-1].reply_to == 1
    finally:
        store.close()


def test_finish_can_replace_the_routing_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from assistant.history import HistoryStore

    store = HistoryStore(tmp_path / "h.db")
    conversation = store.create("t")
    answer = store.append(conversation, "assistant", "", routing={"route": "caregiving"}, complete=False)
    store.finish(answer, "done", routing={"route": "caregiving", "sources": [{"id": "falls"}]})
    (saved,) = [m for m in store.load(conversation) if m.id == answer]
    assert saved.content == "done" and saved.routing == {"route": "caregiving", "sources": [{"id": "falls"}]}
