"""The entry point and the import boundaries: core history without Textual, Textual only when the TUI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from assistant.errors import AssistantError
from assistant.tui import run_tui
from tests.tui.fakes import session_factory

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["assistant.history", "assistant.tui"])
def test_importing_does_not_load_textual(module: str) -> None:
    code = f"import sys, {module}; assert 'textual' not in sys.modules, 'textual imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_unusable_history_path_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(AssistantError, match="cannot open the conversation history"):
        run_tui(session_factory(), history_path=blocker / "history.sqlite3")
