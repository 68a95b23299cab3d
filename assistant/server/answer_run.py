"""One answer generated on its own thread, its events handed to the event loop through an asyncio queue."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from assistant.engine import GenerationParams
from assistant.session import ChatSession, Event, Failed

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection; nobody is waiting for the answer any more."""


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict[str, object]]]) -> None:
    """Return when the client disconnects (call after the request body has been read)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def unless_gone(awaitable: Awaitable[T], gone: asyncio.Task[None]) -> T:
    """The awaitable's result, or ClientGone (the awaitable cancelled) if the client leaves first."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        return task.result()  # it finished while being cancelled: use it
    raise ClientGone


class AnswerRun:
    """`session.ask(question)` on a worker thread: the blocking engine never stalls the event loop.

    `cancel` stops generation within a token; `on_end(seconds)` runs on the loop once the thread is
    done with the engine (not merely when the client stops listening), so the next request starts
    on a free engine.
    """

    def __init__(
        self,
        session: ChatSession,
        question: str,
        params: GenerationParams,
        on_end: Callable[[float], None],
    ) -> None:
        self.cancel = threading.Event()
        self.finished = False
        self._session = session
        self._question = question
        self._params = params
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._thread = threading.Thread(target=self._work, name="serve-answer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def next_event(self) -> Event | None:
        """The next event of the answer; None once the thread has ended."""
        return await self._events.get()

    def _work(self) -> None:
        started = time.perf_counter()
        try:
            for event in self._session.ask(self._question, self.cancel, params=self._params):
                self._post(event)
        except Exception as exc:  # noqa: BLE001 - ask reports engine failures itself; anything else still ends here
            self._post(Failed(f"the answer failed: {type(exc).__name__}: {exc}"))
        finally:
            self._post(None)
            held = time.perf_counter() - started
            self._call(lambda: self._end(held))

    def _end(self, held_s: float) -> None:
        self.finished = True
        self._on_end(held_s)

    def _post(self, event: Event | None) -> None:
        self._call(lambda: self._events.put_nowait(event))

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop has closed: the server is shutting down and nobody is listening
