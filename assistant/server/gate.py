"""The engine answers `slots` requests at a time (one, locally); the others wait in a bounded first-come queue."""

from __future__ import annotations

import asyncio
import math
from collections import deque


class QueueFull(Exception):
    """Every place in the queue is taken."""


class EngineGate:
    """Admits up to `slots` requests to the engine; up to `capacity` more wait in arrival order, the rest are refused.

    A waiter that gives up (its client left) takes its place out of the line at once. Runs on the
    event loop only: every method is called from the loop's thread.
    """

    def __init__(self, capacity: int, slots: int = 1) -> None:
        self.capacity = capacity
        self.slots = slots
        self.running = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self._service_s = 0.0  # moving average of how long one request holds a slot

    @property
    def busy(self) -> bool:
        return self.running >= self.slots

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._line if not f.done())

    async def enter(self) -> None:
        """Return when this request has a slot on the engine; QueueFull when the line is full."""
        if not self.busy and not self.waiting:
            self.running += 1
            return
        if self.waiting >= self.capacity:
            raise QueueFull
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a slot just as the client left: pass it on
            elif turn in self._line:
                self._line.remove(turn)
            raise

    def release(self, held_s: float | None = None) -> None:
        """A slot is free: hand it to the next waiter, in arrival order."""
        if held_s is not None:
            self._service_s = held_s if not self._service_s else 0.8 * self._service_s + 0.2 * held_s
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on: `running` stays the same
                return
        self.running -= 1

    def retry_after_s(self) -> int:
        """A fair guess at when a place frees up: the queue ahead times the typical answer, 1..120 s."""
        if not self._service_s:
            return 5
        return max(1, min(120, math.ceil(self._service_s * (self.waiting + 1) / self.slots)))
