"""Stop sequences on streamed text: pieces pass until a stop string appears, which is cut with all after it."""

from __future__ import annotations

from collections.abc import Sequence


class StopText:
    """Feed text pieces in order; get back what may be shown, and whether a stop string was reached.

    The tail that could still be the start of a stop string is held back until it cannot be (or the
    text ends), so a stop string split across pieces is still caught and never shown.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text now safe to show; after a stop string, always ''."""
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = max((k for s in self._stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, when the text ends without reaching a stop string."""
        rest, self._held = self._held, ""
        return "" if self.stopped else rest
