"""Messages the background threads post up to the app (they never touch widgets themselves)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

from assistant.session import ChatSession, Done, Failed, RouteChosen

if TYPE_CHECKING:
    from assistant.tui.generation import Turn


class LoadProgress(Message):
    """A human-readable line from model preparation."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


class SessionReady(Message):
    """The models are loaded; questions can be answered."""

    def __init__(self, session: ChatSession) -> None:
        super().__init__()
        self.session = session


class LoadFailed(Message):
    """The session could not be built; `hint` says what to do."""

    def __init__(self, error: str, hint: str) -> None:
        super().__init__()
        self.error = error
        self.hint = hint


class AnswerRouted(Message):
    """The route for a turn is decided (its answer row now exists in the store)."""

    def __init__(self, turn: Turn, chosen: RouteChosen) -> None:
        super().__init__()
        self.turn = turn
        self.chosen = chosen


class AnswerDelta(Message):
    """New answer text for a turn."""

    def __init__(self, turn: Turn, text: str) -> None:
        super().__init__()
        self.turn = turn
        self.text = text


class AnswerDone(Message):
    """A turn finished (possibly stopped by the user)."""

    def __init__(self, turn: Turn, done: Done) -> None:
        super().__init__()
        self.turn = turn
        self.done = done


class AnswerFailed(Message):
    """A turn failed; `failed.partial` is what streamed before."""

    def __init__(self, turn: Turn, failed: Failed) -> None:
        super().__init__()
        self.turn = turn
        self.failed = failed
