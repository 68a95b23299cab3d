"""The bottom status line: base model and quantization, last answer's speed, process memory."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

from textual.reactive import reactive
from textual.widgets import Static

MemoryReader = Callable[[], float | None]


def process_memory_mb() -> float | None:
    """Resident memory of this process in MB (Linux /proc; else the peak from getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (OSError, ValueError):
        return None


class StatusBar(Static):
    """Set its attributes; it renders them. Memory is polled through an injectable reader."""

    model: reactive[str] = reactive("loading model…")
    mode: reactive[str] = reactive("auto")
    rate: reactive[float | None] = reactive(None)
    memory: reactive[float | None] = reactive(None)
    state: reactive[str] = reactive("")

    def __init__(self, memory_reader: MemoryReader = process_memory_mb, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False)
        self._read_memory = memory_reader

    def on_mount(self) -> None:
        self.poll_memory()
        self.set_interval(2.0, self.poll_memory)

    def poll_memory(self) -> None:
        """Read process memory now."""
        self.memory = self._read_memory()

    def render(self) -> str:
        rate = f"{self.rate:.1f} tok/s" if self.rate else "– tok/s"
        memory = f"{self.memory:,.0f} MB" if self.memory is not None else "? MB"
        route = "auto routing" if self.mode == "auto" else f"forced: {self.mode}"
        parts = [self.model, route, rate, memory]
        if self.state:
            parts.append(self.state)
        return " " + " │ ".join(parts)
