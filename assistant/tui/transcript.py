"""The conversation view: questions, streamed Markdown answers and their route badges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from assistant.history import StoredMessage
from assistant.tui.format import badge_text, confidence_level

WELCOME = (
    "Ask anything. Caregiving questions go to the caregiving adapter, everything else to the base model;"
    " each answer says where it came from.\n/help lists commands and keys."
)

#: Under a saved question that never got an answer (the app was closed while it waited).
UNANSWERED = "not answered — press ↑ in the box to bring it back, then Enter"


class UserMessage(Static):
    """A question as typed (plain text, never Markdown: what you typed is what you see)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.border_title = "You"


class RouteBadge(Static):
    """`● route · adapter · confidence`, coloured by confidence; clicking it opens /why."""

    class Selected(Message):
        """The badge was clicked."""

        def __init__(self, answer: AssistantMessage) -> None:
            super().__init__()
            self.answer = answer

    def __init__(self, answer: AssistantMessage) -> None:
        super().__init__("", markup=False)
        self.answer = answer
        self.tooltip = "click (or /why) to see why this route was chosen"

    def show(self, record: dict[str, Any] | None, ending: str = "") -> None:
        """Set the words and the colour class."""
        self.update(badge_text(record, ending))
        for level in ("high", "mid", "low", "forced"):
            self.set_class(level == confidence_level(record), f"-{level}")

    def on_click(self) -> None:
        self.post_message(self.Selected(self.answer))


class AssistantMessage(Vertical):
    """One answer: a status line until text arrives, the Markdown body, and the badge."""

    def __init__(
        self, question: str, *, text: str = "", record: dict[str, Any] | None = None, status: str = "", ending: str = ""
    ) -> None:
        super().__init__(classes="-interrupted" if ending else "")
        self.question = question
        self.record = record
        self.ending = ending  # "", "stopped", "failed" or "interrupted"
        self._initial_text = text
        self._status = status
        self._stream: MarkdownStream | None = None
        self.text = text
        self.question_widget: UserMessage | None = None  # removed with the answer when it fails outright

    def compose(self) -> ComposeResult:
        yield Static(self._status, classes="status", markup=False)
        yield Markdown(self._initial_text, open_links=False)
        yield RouteBadge(self)

    def on_mount(self) -> None:
        self.query_one(".status", Static).display = bool(self._status)
        self.query_one(RouteBadge).display = self.record is not None
        if self.record is not None:
            self._show_badge()

    def set_status(self, status: str) -> None:
        """'queued', 'thinking…', 'stopping…' — shown until the first token."""
        line = self.query_one(".status", Static)
        line.update(status)
        line.display = bool(status) and not self.text

    def set_route(self, record: dict[str, Any]) -> None:
        """Show where the answer comes from (before the first token)."""
        self.record = record
        self._show_badge()

    async def append(self, text: str) -> None:
        """Stream more answer text (appended, never re-rendered from scratch)."""
        if self._stream is None:
            self.query_one(".status", Static).display = False
            self._stream = Markdown.get_stream(self.query_one(Markdown))
        self.text += text
        await self._stream.write(text)

    async def finish(self, ending: str = "") -> None:
        """Flush the stream and mark how the answer ended ("" = complete, "stopped", "failed")."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.ending = ending
        self.set_class(bool(ending), "-interrupted")
        self.set_status("")
        if self.record is not None:
            self._show_badge()

    def _show_badge(self) -> None:
        badge = self.query_one(RouteBadge)
        badge.display = True
        badge.show(self.record, self.ending)


class Transcript(VerticalScroll):
    """The scrolling list of messages; it follows the newest text unless the user scrolls up."""

    def on_mount(self) -> None:
        self.anchor()

    async def show_conversation(self, messages: Sequence[StoredMessage], note: str = "") -> None:
        """Replace the view with a saved conversation."""
        await self.remove_children()
        widgets: list[Static | AssistantMessage] = []
        if note:
            widgets.append(Static(note, classes="note", markup=False))
        question = ""
        for i, m in enumerate(messages):
            if m.role == "user":
                question = m.content
                widgets.append(UserMessage(m.content))
                if i + 1 == len(messages) or messages[i + 1].role != "assistant":
                    widgets.append(Static(UNANSWERED, classes="note unanswered", markup=False))
            elif m.role == "assistant":
                record = m.routing or {"route": m.route, "adapter": m.adapter, "confidence": m.confidence}
                ending = "failed" if m.error else "stopped" if m.stopped else "" if m.complete else "interrupted"
                widgets.append(AssistantMessage(question, text=m.content, record=record, ending=ending))
        if not widgets:
            widgets.append(Static(WELCOME, classes="note welcome", markup=False))
        await self.mount_all(widgets)
        self.anchor()

    async def add_turn(self, question: str, *, queued: bool) -> AssistantMessage:
        """Show a question and the placeholder its answer will stream into."""
        for welcome in self.query(".welcome"):
            await welcome.remove()
        answer = AssistantMessage(question, status="queued — the model is still loading" if queued else "thinking…")
        answer.question_widget = UserMessage(question)
        await self.mount_all([answer.question_widget, answer])
        self.anchor()
        return answer

    def answers(self) -> list[AssistantMessage]:
        """Every answer in the view, oldest first."""
        return list(self.query(AssistantMessage))
