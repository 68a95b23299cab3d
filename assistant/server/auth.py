"""Bearer-key check for /v1/ when the server has an API key, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from assistant.server.api_errors import ApiError
from assistant.server.request_log import record_of

#: Paths anyone may call: load balancers and supervisors poll it without a key.
OPEN_PATHS = ("/health",)


def key_matches(header: str, key: str) -> bool:
    """True when the Authorization header is `Bearer <key>`; the comparison takes the same time for any wrong key."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode("utf-8"), key.encode("utf-8"))


class BearerAuth:
    """ASGI middleware: 401 in OpenAI's error shape unless `Authorization: Bearer KEY` matches."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
        if key_matches(header, self.key):
            await self.app(scope, receive, send)
            return
        record_of(scope).notes.append("unauthorized")
        message = (
            "missing API key: send `Authorization: Bearer KEY`"
            if not header
            else "the API key is not valid for this server"
        )
        error = ApiError(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.response()(scope, receive, send)
