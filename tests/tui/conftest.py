"""Fixtures for the TUI tests: a throw-away history database and an app factory over the fakes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from assistant.history import HistoryStore
from assistant.tui.app import ChatApp
from tests.tui.fakes import FakeEngine, fixed_memory, session_factory


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[HistoryStore]:
    history = HistoryStore(db_path, clock=lambda: "2025-11-25T10:00:00+08:00")
    yield history
    history.close()


@pytest.fixture
def make_app(store: HistoryStore) -> Callable[..., ChatApp]:
    """`make_app(engine=..., gate=..., fail=..., **app_kwargs)` -> a ChatApp on the fakes and the temp store."""

    def make(
        engine: FakeEngine | None = None, *, gate: Any = None, fail: Exception | None = None, **kwargs: Any
    ) -> ChatApp:
        factory = session_factory(engine or FakeEngine(), gate=gate, fail=fail)
        return ChatApp(factory, kwargs.pop("store", store), memory_reader=fixed_memory, **kwargs)

    return make
