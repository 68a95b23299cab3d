"""The Textual chat shell over ChatSession; `run_tui` is what main.py calls."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.errors import AssistantError

if TYPE_CHECKING:
    from assistant.session import ChatSession
    from assistant.tui.app import ChatApp

__all__ = ["ChatApp", "run_tui"]


def run_tui(
    session_factory: Callable[[Callable[[str], None]], ChatSession],
    *,
    history_path: Path | None = None,
    initial_adapter: str = "auto",
) -> int:
    """Run the chat app until the user quits; returns the exit code.

    `session_factory(progress)` builds the session (loading models) in a background thread and
    may call `progress(line)` with human-readable progress. Conversations go to `history_path`
    (default: the data dir's history.sqlite3). `initial_adapter` is auto, base or an adapter name.
    """
    # Textual is imported here, not at module level, so `main.py ask` never pays for it.
    from assistant.history import HistoryStore
    from assistant.tui.app import ChatApp

    try:
        store = HistoryStore(history_path)
    except (sqlite3.Error, OSError) as exc:
        where = history_path or "the data dir"
        raise AssistantError(
            f"cannot open the conversation history at {where}: {exc}", "check the folder's permissions and free space"
        ) from None
    app = ChatApp(session_factory, store, initial_adapter=initial_adapter)
    try:
        app.run()
        code = app.return_code or 0
    finally:
        store.close()
    if app.loader is not None and app.loader.is_alive():
        # Quit during model loading: the loader thread is inside torch's native code, and a normal
        # interpreter shutdown under it aborts ("terminate called without an active exception").
        # Everything of ours is saved and closed, so leave without finalizing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def __getattr__(name: str) -> Any:
    if name == "ChatApp":
        from assistant.tui.app import ChatApp

        return ChatApp
    raise AttributeError(name)
