"""ChatSession.ask(text) -> events: the one code path behind the TUI and the stdin runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from assistant.answer_policy import AnswerPolicy, Prepared
from assistant.engine import Engine, GenerationParams, Message, StreamStats
from assistant.errors import USER_ERRORS, UsageError
from assistant.knowledge import Passage
from assistant.router import GENERAL, Candidate, RouteChoice

AUTO = "auto"
BASE = "base"
#: A follow-up leaves the current route only when the router is at least this sure.
STICKY_CONFIDENCE = 0.90


class RoutesText(Protocol):
    """What the session needs from a router."""

    def route(self, text: str) -> RouteChoice: ...


@dataclass(frozen=True)
class RouteChosen:
    """Where this answer comes from; `adapter=None` is the base model."""

    choice: RouteChoice
    adapter: str | None
    forced: bool = False
    sticky: bool = False  # kept the previous turn's route although the router leaned elsewhere
    warning: str | None = None


@dataclass(frozen=True)
class Token:
    """A piece of the answer, in order."""

    text: str


@dataclass(frozen=True)
class Done:
    """The answer is complete (or was stopped: `stopped=True`, partial text kept)."""

    answer: str
    new_tokens: int
    latency_ms: float
    tokens_per_s: float
    stopped: bool = False
    truncated_prompt: bool = False
    #: Knowledge entries the answer was given (empty on routes without a knowledge base).
    sources: tuple[Passage, ...] = ()
    #: Sentences the answer guard left out (a medicine not asked about, a dose, a price, a phone number).
    withheld: int = 0
    #: Tokens of the prompt the engine read (0 when the rules answered alone, without the model).
    prompt_tokens: int = 0
    #: Why the answer ended, from the engine: "stop", "length" (max_new_tokens) or "cancelled".
    finish_reason: str = "stop"
    #: (characters kept, characters given) of the conversation when it was cut to fit the context, else None.
    prompt_kept: tuple[int, int] | None = None


@dataclass(frozen=True)
class Failed:
    """The answer failed; `partial` is what had streamed before."""

    error: str
    hint: str = ""
    partial: str = ""


Event = RouteChosen | Token | Done | Failed


def forced_choice(route: str, adapter: str | None, about_assistant: bool = False) -> RouteChoice:
    """A RouteChoice for a user-forced route (the router's choice of route is not used)."""
    return RouteChoice(
        route, adapter, 1.0, 1.0, (Candidate(route, 1.0),), predicted=route, about_assistant=about_assistant
    )


class ChatSession:
    """Routes each question, answers it through the chosen adapter, and keeps the conversation."""

    def __init__(
        self,
        router: RoutesText,
        engine: Engine,
        params: GenerationParams | None = None,
        system_prompt: str | None = None,
        keep_history: bool = True,
        sticky: bool = False,
        answer_prefix: Callable[[str], str] | None = None,
        policy: AnswerPolicy | None = None,
    ) -> None:
        self.router = router
        # The safety rules, knowledge retrieval and answer guard; None = the models answer unguarded
        # (measurement uses that to show what the models alone would say).
        self.policy = policy
        # question -> how an answer about the assistant starts (Identity.answer_prefix); None = never
        self.answer_prefix = answer_prefix
        self.engine = engine
        self.params = params or GenerationParams()
        self.system_prompt = system_prompt
        self.keep_history = keep_history
        self.sticky = sticky
        self.history: list[Message] = []
        self.override: str | None = None  # None = auto routing; BASE or an adapter name forces it
        self._last_route: tuple[str, str | None] | None = None

    def installed(self) -> dict[str, str]:
        """Installed adapter name -> its route."""
        return {a.name: a.route for a in self.engine.adapters()}

    def set_override(self, value: str) -> None:
        """`auto`, `base` or an installed adapter name; anything else is a UsageError."""
        if value == AUTO:
            self.override = None
        elif value == BASE or value in self.installed():
            self.override = value
        else:
            names = ", ".join(sorted(self.installed())) or "none installed"
            raise UsageError(f"no adapter named {value!r}", f"use auto, base or one of: {names}")

    def reset(self) -> None:
        """Start a new conversation."""
        self.history.clear()
        self._last_route = None

    @property
    def last_route(self) -> tuple[str, str | None] | None:
        """(route, adapter) of the last answered turn, which sticky routing leans on."""
        return self._last_route

    def restore(self, history: list[Message], last_route: tuple[str, str | None] | None) -> None:
        """Continue a saved conversation: its turns and the route its last answer took."""
        self.history = list(history)
        self._last_route = last_route

    def choose(self, text: str) -> RouteChosen:
        """Decide the route and adapter for `text` without generating."""
        installed = self.installed()
        if self.override is not None:
            # The router still says whether the question is about the assistant, on a forced route too.
            about = self.answer_prefix is not None and self.router.route(text).about_assistant
            if self.override == BASE:
                return RouteChosen(forced_choice(GENERAL, None, about), None, forced=True)
            route = installed[self.override]
            return RouteChosen(forced_choice(route, self.override, about), self.override, forced=True)
        choice = self.router.route(text)
        route, adapter, sticky = choice.route, choice.adapter, False
        if self.sticky and self._last_route and self._last_route[0] != route and self.history:
            clearly = not choice.abstained and choice.confidence >= STICKY_CONFIDENCE
            if not clearly:
                route, adapter = self._last_route
                sticky = True
        warning = None
        if adapter is not None and adapter not in installed:
            warning = f"route {route!r} has no installed adapter {adapter!r}; the base model answers"
            adapter = None
        if sticky or route != choice.route or adapter != choice.adapter:
            # The choice names what really answers: never a missing adapter.
            choice = replace(choice, route=route, adapter=adapter)
        return RouteChosen(choice, adapter, sticky=sticky, warning=warning)

    def ask(
        self, text: str, cancel: threading.Event | None = None, params: GenerationParams | None = None
    ) -> Iterator[Event]:
        """Route `text`, stream the answer, and remember the turn (even a stopped one).

        `params` replaces the session's own sampling settings for this answer only (a server
        request's max_tokens, temperature, top_p, seed and stop).
        """
        start = time.perf_counter()
        try:
            chosen = self.choose(text)
        except USER_ERRORS as exc:
            yield Failed(getattr(exc, "message", str(exc)), getattr(exc, "hint", ""))
            return
        yield chosen
        about = chosen.choice.about_assistant and self.answer_prefix is not None
        prepared = self.policy.prepare(text, chosen.choice.route, about) if self.policy else None
        lead = prepared.lead if prepared else None
        if prepared and lead and lead.complete:  # the rules answer on their own: no model words to trust
            yield Token(lead.text)
            self._remember(text, lead.text, chosen)
            yield Done(lead.text, 0, (time.perf_counter() - start) * 1000.0, 0.0)
            return
        messages = list(self.history) if self.keep_history else []
        if self.system_prompt:
            messages.insert(0, Message("system", self.system_prompt))
        messages.append(Message("user", prepared.user_turn if prepared else text))
        params = params or self.params
        if lead:
            params = replace(params, answer_prefix=lead.text)
        elif about and self.answer_prefix is not None:
            params = replace(params, answer_prefix=self.answer_prefix(text))
        stats = StreamStats()
        pieces: list[str] = []
        try:
            for piece in self._guarded(
                self.engine.stream(messages, chosen.adapter, params, cancel, stats), params, prepared
            ):
                pieces.append(piece)
                yield Token(piece)
        except USER_ERRORS as exc:
            yield Failed(getattr(exc, "message", str(exc)), getattr(exc, "hint", ""), "".join(pieces))
            return
        except Exception as exc:  # noqa: BLE001 - a model failure must not kill the shell
            yield Failed(
                f"generation failed: {type(exc).__name__}: {exc}", "try again, or a shorter question", "".join(pieces)
            )
            return
        answer = "".join(pieces)
        elapsed = time.perf_counter() - start
        stopped = cancel is not None and cancel.is_set()
        decode_s = max(stats.total_s - stats.first_token_s, 1e-9)
        rate = (stats.new_tokens - 1) / decode_s if stats.new_tokens > 1 else 0.0
        self._remember(text, answer, chosen)
        sources = prepared.passages if prepared else ()
        withheld = len(prepared.guard.dropped) if prepared else 0
        yield Done(
            answer,
            stats.new_tokens,
            elapsed * 1000.0,
            rate,
            stopped,
            stats.truncated_prompt,
            sources,
            withheld,
            prompt_tokens=stats.prompt_tokens,
            # A cancel the engine saw only while waiting for its lock leaves the default reason.
            finish_reason="cancelled" if stopped else stats.finish_reason,
            prompt_kept=(stats.kept_chars, stats.total_chars) if stats.truncated_prompt else None,
        )

    def _remember(self, text: str, answer: str, chosen: RouteChosen) -> None:
        """Keep the turn (the user's own words, not the passages they were sent with) and its route."""
        if self.keep_history:
            self.history += [Message("user", text), Message("assistant", answer)]
        self._last_route = (chosen.choice.route, chosen.adapter)

    @staticmethod
    def _guarded(pieces: Iterator[str], params: GenerationParams, prepared: Prepared | None) -> Iterator[str]:
        """The engine's pieces through the answer guard; the answer prefix (ours, streamed first) passes as is."""
        if prepared is None:
            yield from pieces
            return
        first = True
        for piece in pieces:
            if first and params.answer_prefix and piece == params.answer_prefix:
                first = False
                yield piece
                continue
            first = False
            if kept := prepared.guard.feed(piece):
                yield kept
        if rest := prepared.guard.flush():
            yield rest
