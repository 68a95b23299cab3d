"""Slash commands and key bindings: parsing and the /help text (one table, so help never drifts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A parsed `/name arg`."""

    name: str
    arg: str = ""


#: name -> (usage, what it does), in /help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("/help", "this help"),
    "why": ("/why", "why the last answer took its route: candidates, scores, nearest training examples"),
    "adapter": ("/adapter NAME|base|auto", "force a route (an adapter or the base model) or go back to auto routing"),
    "adapters": ("/adapters", "show or hide the adapters panel"),
    "history": ("/history", "list saved conversations and reopen one"),
    "new": ("/new", "start a new conversation"),
    "export": ("/export [PATH]", "write this conversation as Markdown (default: the exports folder)"),
    "quit": ("/quit", "leave (the conversation is already saved)"),
}

#: key -> what it does, in /help order (the app's BINDINGS use the same keys).
KEYS: list[tuple[str, str]] = [
    ("Enter", "send the question"),
    ("Ctrl+J", "new line in the question (Shift+Enter / Alt+Enter too, where the terminal reports them)"),
    ("Up / Down", "recall earlier questions (in an empty box)"),
    ("Esc", "stop the answer (the partial answer stays, marked stopped); close a dialog"),
    ("F1", "help"),
    ("F2", "why this route (or click an answer's badge)"),
    ("F3", "history"),
    ("F4", "cycle the route: auto → each adapter → base → auto"),
    ("F5", "show/hide the adapters panel"),
    ("Ctrl+N", "new conversation"),
    ("Ctrl+S", "export the conversation as Markdown"),
    ("Ctrl+Q", "quit"),
]


def parse(text: str) -> Command | None:
    """`/name arg` -> Command; None for an ordinary question (`//x` sends the literal text `/x`)."""
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    name, _, arg = stripped[1:].partition(" ")
    return Command(name.lower(), arg.strip())


def literal(text: str) -> str:
    """The question to send: `//x` means `/x`."""
    stripped = text.strip()
    return stripped[1:] if stripped.startswith("//") else stripped


def help_markdown(adapters: list[str]) -> str:
    """The /help page."""
    rows = ["## Commands", "", "| command | what it does |", "|---|---|"]
    # A bare | would end the table cell, even inside backticks.
    rows += [f"| `{usage.replace('|', chr(92) + '|')}` | {what} |" for usage, what in COMMANDS.values()]
    rows += ["", "## Keys", "", "| key | what it does |", "|---|---|"]
    rows += [f"| {key} | {what} |" for key, what in KEYS]
    installed = ", ".join(f"`{a}`" for a in adapters) or "(none yet — the model is loading)"
    rows += [
        "",
        "## Routing",
        "",
        f"Installed adapters: {installed}. The badge under each answer shows route · adapter (or base) ·"
        " the router's confidence: green ≥ 90%, yellow ≥ 70%, red below.",
        "A follow-up stays on the current route unless the router is at least 90% sure (and not"
        " abstaining) that it belongs elsewhere.",
        "",
        "Start a question with `//` to send text that begins with `/`.",
    ]
    return "\n".join(rows)
