"""`serve`: the assistant behind an OpenAI-compatible HTTP API, a shell over the session like the TUI.

main.py builds the models (one router, one engine, one answer policy) and hands a loader here;
every request then gets its own ChatSession sharing them, and waits its turn for the engine.
"""

from __future__ import annotations

from assistant.server.backend import SerialEncoder, SessionLoader
from assistant.server.options import API_KEY_ENV, ServeOptions, check_exposure
from assistant.server.run import RunningServer, serve, start

__all__ = [
    "API_KEY_ENV",
    "RunningServer",
    "SerialEncoder",
    "ServeOptions",
    "SessionLoader",
    "check_exposure",
    "serve",
    "start",
]
