"""The chat app: one ChatSession behind a transcript, a prompt, an adapters panel and a status bar."""

from __future__ import annotations

import sqlite3
import threading
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Header

from assistant.history import HistoryStore, last_route, session_history
from assistant.session import AUTO, BASE, ChatSession
from assistant.tui import events
from assistant.tui.actions import ConversationApp
from assistant.tui.adapters_panel import AdaptersPanel
from assistant.tui.commands import literal, parse
from assistant.tui.format import routing_record, with_sources
from assistant.tui.generation import SessionFactory, Turn, load_session, run_turn
from assistant.tui.loading import LoadingPanel
from assistant.tui.prompt import PromptInput
from assistant.tui.statusbar import MemoryReader, StatusBar, process_memory_mb
from assistant.tui.transcript import Transcript

RESUMED = "Reopened your last conversation — /new starts a fresh one, /history lists them all."


class ChatApp(ConversationApp):
    """Questions go into a queue; one thread answers them in order and posts events back up."""

    CSS_PATH = "app.tcss"
    TITLE = "颐家助手 · Yijia assistant"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop", show=False),
        Binding("f1", "help", "Help"),
        Binding("f2", "why", "Why"),
        Binding("f3", "history", "History"),
        Binding("f4", "cycle_route", "Route"),
        Binding("f5", "toggle_adapters", "Adapters"),
        Binding("ctrl+n", "new", "New"),
        Binding("ctrl+s", "export", "Export"),
    ]

    def __init__(
        self,
        session_factory: SessionFactory,
        store: HistoryStore,
        *,
        memory_reader: MemoryReader = process_memory_mb,
        initial_adapter: str = AUTO,
        resume: bool = True,
    ) -> None:
        super().__init__(store, initial_adapter)
        self.session_factory = session_factory
        self.memory_reader = memory_reader
        self.resume = resume
        self.loader: threading.Thread | None = None  # builds the session; see on_mount

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="main"):
            with Vertical(id="chat"):
                yield LoadingPanel(id="loading")
                yield Transcript(id="transcript")
                yield PromptInput(id="prompt")
            yield AdaptersPanel(id="adapters")
        yield StatusBar(self.memory_reader, id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        self.query_one(StatusBar).mode = self.pending_override
        latest = self.store.latest() if self.resume else None
        await self.open_conversation(latest, note=RESUMED if latest else "")
        if latest:
            self.notify(RESUMED, title="Welcome back")
        # A daemon thread, not a Textual worker: quitting during a minutes-long first-run model
        # conversion must not wait for it (Textual joins its worker threads on exit).
        self.loader = threading.Thread(
            target=load_session, args=(self.session_factory, self.post_safely), daemon=True, name="load-session"
        )
        self.loader.start()

    def post_safely(self, message: Message) -> None:
        """post_message for background threads; the app may already be gone."""
        try:
            self.post_message(message)
        except RuntimeError:  # event loop closed: the user quit while we were working
            pass

    # --- loading ---------------------------------------------------------------------------

    def on_load_progress(self, message: events.LoadProgress) -> None:
        if self.session is None:
            self.query_one(LoadingPanel).add_line(message.line)

    async def on_session_ready(self, message: events.SessionReady) -> None:
        self.session = session = message.session
        await self.query_one(LoadingPanel).remove()
        try:
            info = session.engine.info()
            self.query_one(StatusBar).model = f"{info.base_model} · {info.quantization}"
        except Exception as exc:  # noqa: BLE001 - the status line is not worth a crash
            self.query_one(StatusBar).model = f"model info unavailable ({type(exc).__name__})"
        if self.conversation_id is not None:
            saved = self.store.load(self.conversation_id)
            session.restore(session_history(saved), last_route(saved))
        self.set_route(self.pending_override, quiet=self.pending_override == AUTO)
        self.query_one(StatusBar).state = "ready"
        self.pump()

    def on_load_failed(self, message: events.LoadFailed) -> None:
        self.query_one(LoadingPanel).fail(message.error, message.hint)
        self.query_one(StatusBar).state = "model not loaded"
        self.notify(f"{message.error}\n{message.hint}".strip(), title="Model not loaded", severity="error", timeout=30)

    # --- asking ----------------------------------------------------------------------------

    async def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        text = message.text.strip()
        if not text:
            return
        command = parse(text)
        if command is not None:
            await self.run_command(command)
        else:
            await self.ask(literal(text))

    async def ask(self, question: str) -> None:
        """Save the question (before anything can fail), show it, and queue it for an answer."""
        try:
            if self.conversation_id is None:
                self.conversation_id = self.store.create()
            question_id = self.store.append(self.conversation_id, "user", question)
        except sqlite3.Error as exc:
            hint = "free disk space or fix its permissions, then send again"
            self.notify(
                f"could not save to {self.store.path}: {exc}\n{hint}", title="History not writable", severity="error"
            )
            self.query_one(PromptInput).restore(question)
            return
        self.sub_title = self.store.title(self.conversation_id)
        turn = Turn(question, self.conversation_id, question_id)
        answer = await self.query_one(Transcript).add_turn(question, queued=self.session is None)
        if self.session is not None and (self.current or self.queue):
            answer.set_status("waiting for the previous answer…")
        self._answers[turn.id] = answer
        self.queue.append(turn)
        self.pump()

    def pump(self) -> None:
        """Start the next queued question when the model is free."""
        if self.current is not None or self.session is None or not self.queue:
            return
        self.current = turn = self.queue.popleft()
        self._answers[turn.id].set_status("thinking…")
        for waiting in self.queue:
            self._answers[waiting.id].set_status("waiting for the previous answer…")
        self.query_one(StatusBar).state = "answering — Esc stops"
        self._generate(self.session, turn)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(self, session: ChatSession, turn: Turn) -> None:
        # Runs in a thread: touches only the session and the store, reports through messages.
        run_turn(session, self.store, turn, self.post_safely)

    def on_answer_routed(self, message: events.AnswerRouted) -> None:
        if answer := self._answers.get(message.turn.id):
            answer.set_route(routing_record(message.chosen))
        if message.chosen.warning:
            self.notify(message.chosen.warning, title="Route", severity="warning")
        self.active = message.chosen.adapter or BASE
        self.refresh_panel()

    async def on_answer_delta(self, message: events.AnswerDelta) -> None:
        if answer := self._answers.get(message.turn.id):
            await answer.append(message.text)

    async def on_answer_done(self, message: events.AnswerDone) -> None:
        if answer := self._answers.get(message.turn.id):
            done = message.done
            if (done.sources or done.withheld) and answer.record is not None:
                answer.record = with_sources(answer.record, done)
            await answer.finish("stopped" if done.stopped else "")
        self.query_one(StatusBar).rate = message.done.tokens_per_s
        if (kept := message.done.prompt_kept) is not None:
            self.notify(
                f"The conversation is longer than the model's context: only its last {kept[0]:,} of "
                f"{kept[1]:,} characters were read (the max_context setting raises the limit).",
                title="Shortened",
                severity="warning",
                timeout=15,
            )
        await self._turn_ended(message.turn, "stopped" if message.done.stopped else "ready")

    async def on_answer_failed(self, message: events.AnswerFailed) -> None:
        failed, turn = message.failed, message.turn
        answer = self._answers.get(turn.id)
        if failed.partial and answer is not None:
            await answer.finish("failed")
        else:
            # Nothing was answered: un-send the question so it can simply be sent again.
            self.store.delete_message(turn.question_id)
            if answer is not None:
                await answer.remove()
                if answer.question_widget is not None:
                    await answer.question_widget.remove()
        self.query_one(PromptInput).restore(turn.text)
        self.notify(f"{failed.error}\n{failed.hint}".strip(), title="Answer failed", severity="error", timeout=15)
        await self._turn_ended(turn, "answer failed")

    async def _turn_ended(self, turn: Turn, state: str) -> None:
        self._answers.pop(turn.id, None)
        if self.current is turn:
            self.current = None
        self.query_one(StatusBar).state = state
        callbacks, self._after_turn = self._after_turn, []
        for callback in callbacks:
            await callback()
        self.pump()

    def action_stop(self) -> None:
        """Esc: stop the current answer; what streamed so far stays, marked stopped."""
        if self.current is None:
            return
        self.current.cancel.set()
        if answer := self._answers.get(self.current.id):
            answer.set_status("stopping…")
        self.query_one(StatusBar).state = "stopping…"

    async def action_quit(self) -> None:
        if self.current is not None:
            self.current.cancel.set()  # the partial answer is saved as stopped
        self.exit(0)
