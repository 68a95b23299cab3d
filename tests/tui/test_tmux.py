"""The real app in a real terminal (tmux), driven as a person would: type, press Enter, read the screen."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from assistant.history import HistoryStore

REPO = Path(__file__).resolve().parents[2]
#: First-run model preparation (conversion + 4-bit quantization) can take many minutes on a CPU.
ANSWER_TIMEOUT = float(os.environ.get("TUI_TMUX_TIMEOUT", 45 * 60))
BADGE = re.compile(r"● (\S+) · (adapter \S+|base) · (\d+%|forced)")


class Tmux:
    """A private tmux server (own socket, no user config) with one fixed-size window."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name, "-f", "/dev/null"]

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "app")

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if "could not be loaded" in screen or "Traceback" in screen:
                pytest.fail(f"the app failed while waiting for {what}:\n{screen}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; the screen:\n{screen}")
            time.sleep(1.0)


@pytest.mark.slow
def test_real_app_answers_in_a_real_terminal(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux)")
    data_home = tmp_path / "data"  # a fresh conversation database; the model cache stays the real one
    tmux = Tmux(f"yijia-tui-test-{os.getpid()}")
    command = f"cd {shlex.quote(str(REPO))} && .venv/bin/python main.py"
    env = {**os.environ, "XDG_DATA_HOME": str(data_home), "TERM": "xterm-256color"}
    # The server starts with this environment because the socket is new.
    subprocess.run(
        [*tmux.base, "new-session", "-d", "-s", "app", "-x", "120", "-y", "40", command], check=True, env=env
    )
    try:
        tmux("set-option", "-t", "app", "remain-on-exit", "on")  # keep a crash's traceback readable
        tmux.wait_for(lambda s: "Ask a question" in s, 60, "the input box")
        tmux("send-keys", "-t", "app", "-l", "你是谁")
        tmux("send-keys", "-t", "app", "Enter")
        screen = tmux.wait_for(lambda s: bool(BADGE.search(s)) and "│ ready" in s, ANSWER_TIMEOUT, "an answer")
        lines = screen.splitlines()
        badge_row = next(i for i, line in enumerate(lines) if BADGE.search(line))
        question_row = max(i for i in range(1, badge_row) if "你是谁" in lines[i] and "╭─ You" in lines[i - 1])
        # Left of the adapters panel's border (▏), without the answer's own left border (▎).
        answer = "".join(line.split("▏")[0].strip(" ▎") for line in lines[question_row + 2 : badge_row])
        assert answer.strip(), f"no answer text above the badge:\n{screen}"
        tmux("send-keys", "-t", "app", "C-q")
        time.sleep(2)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
    store = HistoryStore(data_home / "yijia-assistant" / "history.sqlite3")
    try:
        question, reply = store.load(store.latest() or 0)
        assert question.content == "你是谁" and reply.complete and reply.content and reply.route
    finally:
        store.close()
