"""The chat app's conversation state, and what slash commands and key bindings do with it."""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.app import App

from assistant.errors import USER_ERRORS
from assistant.history import HistoryStore, StoredMessage, last_route, session_history
from assistant.session import AUTO, BASE, ChatSession
from assistant.tui.adapters_panel import AdaptersPanel
from assistant.tui.commands import COMMANDS, Command, help_markdown
from assistant.tui.generation import Turn
from assistant.tui.prompt import PromptInput
from assistant.tui.screens import HelpScreen, HistoryScreen, WhyScreen
from assistant.tui.statusbar import StatusBar
from assistant.tui.transcript import AssistantMessage, RouteBadge, Transcript

__all__ = ["AfterTurn", "ConversationApp"]

#: Deferred work that must wait until the running answer has stopped and been saved.
AfterTurn = Callable[[], Awaitable[None]]


class ConversationApp(App[int]):
    """The base of ChatApp: the state both halves share, routing, dialogs and conversations.

    ChatApp adds loading the model and answering the queued questions (two classes, to keep
    each module small).
    """

    def __init__(self, store: HistoryStore, initial_adapter: str) -> None:
        super().__init__()
        self.store = store
        self.session: ChatSession | None = None  # set once the model has loaded
        self.conversation_id: int | None = None
        self.pending_override = initial_adapter  # applied (and validated) once the session exists
        self.queue: deque[Turn] = deque()
        self.current: Turn | None = None
        self.active: str | None = None  # adapter of the latest answer, BASE, or None before any
        self._answers: dict[int, AssistantMessage] = {}
        self._after_turn: list[AfterTurn] = []

    async def run_command(self, command: Command) -> None:
        """Dispatch `/name arg`; unknown names get a hint instead of an error."""
        handlers: dict[str, Callable[[], object]] = {
            "help": self.action_help,
            "why": self.action_why,
            "adapter": lambda: self.set_route(command.arg) if command.arg else self._describe_route(),
            "adapters": self.action_toggle_adapters,
            "history": self.action_history,
            "new": self.action_new,
            "export": lambda: self.action_export(command.arg),
            "quit": self.action_quit,
        }
        handler = handlers.get(command.name)
        if handler is None:
            known = " ".join(f"/{name}" for name in COMMANDS)
            self.notify(
                f"unknown command /{command.name}\ncommands: {known} (start with // to send a literal /)",
                severity="warning",
            )
            return
        result = handler()
        if inspect.isawaitable(result):
            await result

    # --- routing -----------------------------------------------------------------------------

    def set_route(self, value: str, *, quiet: bool = False) -> None:
        """Force an adapter or the base model, or go back to auto routing (validated by the session)."""
        value = value.strip()
        if value.lower() in (AUTO, BASE):
            value = value.lower()
        if self.session is None:
            self.pending_override = value
            self.refresh_panel()
            if not quiet:
                self.notify(f"will use route '{value}' once the model is loaded")
            return
        try:
            self.session.set_override(value)
        except USER_ERRORS as exc:
            self.notify(
                f"{getattr(exc, 'message', exc)}\n{getattr(exc, 'hint', '')}".strip(), title="Route", severity="error"
            )
            value = self.session.override or AUTO
        else:
            if not quiet:
                what = {AUTO: "automatic routing", BASE: "the base model"}.get(value, f"adapter {value}")
                self.notify(f"Answers now come from {what}.", title="Route")
        self.pending_override = value
        self.refresh_panel()

    def _describe_route(self) -> None:
        names = sorted(self.session.installed()) if self.session is not None else []
        mode = (self.session.override if self.session else None) or self.pending_override
        self.notify(f"route: {mode}\nuse /adapter {' | '.join([*names, BASE, AUTO])}", title="Route")

    def action_cycle_route(self) -> None:
        """F4: auto → each adapter → base → auto."""
        if self.session is None:
            self.notify("the model is still loading; /adapter NAME works meanwhile", severity="warning")
            return
        order = [AUTO, *sorted(self.session.installed()), BASE]
        mode = self.session.override or AUTO
        self.set_route(order[(order.index(mode) + 1) % len(order)] if mode in order else AUTO)

    def refresh_panel(self) -> None:
        """Re-draw the adapters panel and the route in the status bar (attributes down)."""
        session = self.session
        mode = (session.override or AUTO) if session is not None else self.pending_override
        self.query_one(StatusBar).mode = mode
        try:
            adapters = session.engine.adapters() if session is not None else []
        except Exception as exc:  # noqa: BLE001 - a broken registry shows as an empty panel plus a notice
            adapters = []
            self.notify(f"could not list adapters: {exc}", severity="warning")
        self.query_one(AdaptersPanel).show(adapters, mode=mode, active=self.active, ready=session is not None)

    def on_adapters_panel_chosen(self, message: AdaptersPanel.Chosen) -> None:
        self.set_route(message.value)

    def action_toggle_adapters(self) -> None:
        """F5: show or hide the adapters panel."""
        panel = self.query_one(AdaptersPanel)
        panel.display = not panel.display

    # --- dialogs -----------------------------------------------------------------------------

    def action_why(self) -> None:
        """F2 / `/why`: explain the latest answer's route."""
        answers = [a for a in self.query_one(Transcript).answers() if a.record is not None]
        if not answers:
            self.notify("no routed answer yet — ask something first")
            return
        self.show_why(answers[-1])

    def show_why(self, answer: AssistantMessage) -> None:
        """Open the /why view for one answer."""
        self.push_screen(WhyScreen(answer.question, answer.record))

    def on_route_badge_selected(self, message: RouteBadge.Selected) -> None:
        self.show_why(message.answer)

    def action_help(self) -> None:
        """F1 / `/help`."""
        names = sorted(self.session.installed()) if self.session is not None else []
        self.push_screen(HelpScreen(help_markdown(names)))

    # --- conversations -----------------------------------------------------------------------

    async def open_conversation(self, conversation_id: int | None, note: str = "") -> None:
        """Show a saved conversation (or a fresh one) and make it the session's context."""
        if self.current is not None:
            self.current.cancel.set()  # its partial answer is saved, as stopped, in its own conversation
        self.queue.clear()  # questions queued during loading stay saved as unanswered
        self._answers.clear()  # late events of a stopping answer find no widget and are dropped
        self.conversation_id = conversation_id
        messages = self.store.load(conversation_id) if conversation_id is not None else []
        if self.current is None:
            await self._restore_session(messages)
        else:
            # The session is busy until the stopped answer is recorded; swap its history after that.
            self._after_turn.append(lambda: self._restore_session(messages))
        self.active = None
        await self.query_one(Transcript).show_conversation(messages, note)
        self.query_one(PromptInput).seed([m.content for m in messages if m.role == "user"])
        self.sub_title = self.store.title(conversation_id) if conversation_id is not None else "new conversation"
        self.refresh_panel()

    async def _restore_session(self, messages: list[StoredMessage]) -> None:
        if self.session is not None:
            self.session.reset()
            self.session.restore(session_history(messages), last_route(messages))

    def action_history(self) -> None:
        """F3 / `/history`: pick a saved conversation to reopen."""
        screen = HistoryScreen(self.store.list_conversations(), self.conversation_id)
        self.push_screen(screen, self._reopen)

    async def _reopen(self, conversation_id: int | None) -> None:
        if conversation_id is not None and conversation_id != self.conversation_id:
            await self.open_conversation(conversation_id)
            self.notify(f"Reopened: {self.store.title(conversation_id)}")

    async def action_new(self) -> None:
        """Ctrl+N / `/new`."""
        if self.conversation_id is None:
            self.notify("this is already a new conversation")
            return
        await self.open_conversation(None)

    def action_export(self, arg: str = "") -> None:
        """Ctrl+S / `/export [PATH]`: write the conversation as Markdown."""
        if self.conversation_id is None:
            self.notify("nothing to export yet — ask something first")
            return
        path = Path(arg).expanduser() if arg else self.exports_dir() / self._export_name()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.store.export_markdown(self.conversation_id), encoding="utf-8")
        except OSError as exc:
            self.notify(
                f"could not write {path}: {exc.strerror or exc}\ntry /export with another path",
                title="Export failed",
                severity="error",
            )
            return
        self.notify(f"Exported to {path}", title="Export")

    def exports_dir(self) -> Path:
        """Next to the history database, so tests and users with a custom path keep both together."""
        return self.store.path.parent / "exports"

    def _export_name(self) -> str:
        title = self.store.title(self.conversation_id or 0)
        slug = re.sub(r"[^\w]+", "-", title).strip("-")[:40] or "conversation"
        return f"{self.conversation_id:04d}-{slug}.md"
