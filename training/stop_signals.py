"""Ctrl-C and SIGTERM during training: the first asks for a clean stop, a second one aborts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


@dataclass
class StopFlag:
    """Set by the signal handler; the loop stops at the next micro-batch boundary."""

    requested: bool = False
    signal_name: str = ""


@contextmanager
def stop_on_signals(flag: StopFlag, log: Callable[[str], None]) -> Iterator[None]:
    """First Ctrl-C/SIGTERM asks for a clean stop (checkpoint, then exit); a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed on the main thread
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested, flag.signal_name = True, signal.Signals(signum).name
        log(f"\n{flag.signal_name}: saving a checkpoint after this batch (press Ctrl-C again to abort at once)")

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
