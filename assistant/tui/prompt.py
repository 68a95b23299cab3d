"""The question box: Enter sends, Ctrl+J (or Shift/Alt+Enter where the terminal reports them) adds a line."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

#: Keys that insert a newline instead of sending. Most terminals cannot tell Shift+Enter from Enter,
#: but every terminal sends Ctrl+J as a plain line feed, so Ctrl+J is the documented one.
NEWLINE_KEYS = frozenset({"ctrl+j", "shift+enter", "alt+enter", "newline"})

PLACEHOLDER = "Ask a question — Enter sends, Ctrl+J adds a line, /help lists commands"


class PromptInput(TextArea):
    """A multi-line input that empties itself and posts `Submitted` on Enter; Up recalls earlier questions."""

    class Submitted(Message):
        """The user pressed Enter; the app decides what the text means."""

        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

        @property
        def control(self) -> PromptInput:
            return self.prompt

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(
            soft_wrap=True, tab_behavior="focus", placeholder=PLACEHOLDER, id=id, highlight_cursor_line=False
        )
        self._recall: list[str] = []
        self._recall_at = 0

    def seed(self, questions: list[str]) -> None:
        """Start the Up-arrow list with a reopened conversation's questions."""
        self._recall = []
        for question in questions:
            self.remember(question)

    def remember(self, text: str) -> None:
        """Add a sent question to the Up-arrow recall list."""
        if text and (not self._recall or self._recall[-1] != text):
            self._recall.append(text)
        self._recall_at = len(self._recall)

    def restore(self, text: str) -> None:
        """Put text back (after a failed answer) unless the user has started typing something else."""
        if not self.text.strip():
            self.load_text(text)
            self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            # Clear here, not in the app's handler: keys typed before the app handles the message
            # must land in an empty box, not be glued to (and cleared with) the sent text.
            text = self.text
            if text.strip():
                self.clear()
                self.remember(text.strip())
                self.post_message(self.Submitted(self, text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self.replace("\n", start, end, maintain_selection_offset=False)
            return
        if event.key in ("up", "down") and self._recall and "\n" not in self.text and self._browsing():
            event.stop()
            event.prevent_default()
            step = -1 if event.key == "up" else 1
            self._recall_at = max(0, min(len(self._recall), self._recall_at + step))
            self.load_text(self._recall[self._recall_at] if self._recall_at < len(self._recall) else "")
            self.move_cursor(self.document.end)
            return
        await super()._on_key(event)

    def _browsing(self) -> bool:
        # Only recall when the box is empty or shows a recalled question, never over fresh typing.
        return not self.text or (self._recall_at < len(self._recall) and self.text == self._recall[self._recall_at])
