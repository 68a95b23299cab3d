"""How `serve` listens and what it allows: address, API key, CORS, queue and body limits; never keyless off loopback."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from assistant.config import Settings
from assistant.errors import UsageError

#: Where the API key comes from when --api-key is not given (an environment variable stays out of `ps`).
API_KEY_ENV = "YIJIA_API_KEY"
#: Answers in flight at once on a vLLM server, which batches them (the local engine answers one at a time).
SERVER_ENGINE_SLOTS = 8


@dataclass(frozen=True)
class ServeOptions:
    """Everything the HTTP layer needs to know; the models come separately, from the session loader."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    queue_size: int = 16
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens: int = 1024
    log_questions: bool = False
    engine_slots: int = 1

    @classmethod
    def from_settings(
        cls, settings: Settings, api_key: str | None = None, cors_origins: Sequence[str] = ()
    ) -> ServeOptions:
        """The settings' serve_* values, the key from --api-key or $YIJIA_API_KEY, and the CORS origins."""
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if key is not None and not key.strip():
            raise UsageError(
                "the API key is empty", f"give a non-empty --api-key or {API_KEY_ENV}, or neither for no key"
            )
        return cls(
            host=settings.serve_host,
            port=settings.serve_port,
            api_key=key,
            cors_origins=tuple(cors_origins),
            queue_size=settings.serve_queue,
            max_body_bytes=int(settings.serve_max_body_mb * 1024 * 1024),
            max_tokens=settings.serve_max_tokens,
            log_questions=settings.serve_log_questions,
            engine_slots=1 if settings.engine == "local" else SERVER_ENGINE_SLOTS,
        )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(options: ServeOptions) -> None:
    """Refuse to listen beyond this machine without an API key: anyone on the network could use the assistant."""
    if options.api_key is None and not is_loopback(options.host):
        raise UsageError(
            f"refusing to listen on {options.host} without an API key: any machine that can reach it "
            "could use the assistant",
            f"set {API_KEY_ENV} (or --api-key) so clients must send `Authorization: Bearer KEY`, "
            "or listen on 127.0.0.1 (the default)",
        )
