"""The loading view shown above the transcript while the models are prepared in the background."""

from __future__ import annotations

import re

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import LoadingIndicator, Static

HINT = (
    "You can type now: questions wait in a queue and are answered as soon as the model is ready."
    " The first run converts and quantizes the models and can take a few minutes."
)
FAILED_HINT = "Your questions are saved in the history. Fix the problem, then restart."
#: Progress lines kept on screen; older ones scroll away (they are also in the notification log).
KEEP_LINES = 6


class LoadingPanel(Vertical):
    """A spinner, the latest progress lines, and what the user can do meanwhile."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("Preparing the models…", classes="panel-title", markup=False)
        yield LoadingIndicator()
        yield Static("starting", id="loading-log", markup=False)
        yield Static(HINT, classes="hint", markup=False)

    def on_mount(self) -> None:
        # Model preparation also reports by printing to stderr (and tqdm bars); Textual would swallow
        # that while it owns the terminal, so show it here as progress.
        self.app.begin_capture_print(self, stdout=False, stderr=True)

    def on_unmount(self) -> None:
        try:
            self.app.end_capture_print(self)
        except KeyError:
            pass

    def on_print(self, event: events.Print) -> None:
        pieces = [p.strip() for p in re.split(r"[\r\n]+", event.text)]
        pieces = [p for p in pieces if p]
        if pieces and event.text.startswith("\r") and self.lines:
            self.lines = self.lines[:-1]  # a progress bar redrawing its line
        for piece in pieces:
            self.add_line(piece)

    def add_line(self, line: str) -> None:
        """Show one more progress line."""
        self.lines = [*self.lines, line][-KEEP_LINES:]
        self.query_one("#loading-log", Static).update("\n".join(self.lines))

    def fail(self, error: str, hint: str) -> None:
        """Turn the view into an explanation of what went wrong and what to do."""
        self.add_class("-failed")
        self.query_one(LoadingIndicator).display = False
        self.query_one(".panel-title", Static).update("The model could not be loaded")
        self.query_one("#loading-log", Static).update(f"{error}\n{hint}".strip())
        self.query_one(".hint", Static).update(FAILED_HINT)
