"""The HTTP application: the OpenAI-compatible routes, request log, optional CORS and API key, errors as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from assistant.server.api_errors import ApiError, bad_request
from assistant.server.auth import BearerAuth
from assistant.server.chat_request import decode_json, unknown_model
from assistant.server.completions import ServerContext, chat_completions, read_body, ready_backend
from assistant.server.request_log import RequestLog

#: The extra headers a browser page may read (CORS hides non-standard headers otherwise).
EXPOSED_HEADERS = [
    "x-request-id",
    "x-route",
    "x-adapter",
    "x-route-confidence",
    "x-queue-ms",
    "x-max-tokens-clamped",
    "x-prompt-truncated",
    "retry-after",
]
#: Texts one POST /v1/route may carry.
MAX_ROUTE_TEXTS = 256


def _ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def health(request: Request) -> Response:
    """200 when ready; 503 while loading (or failed), so load balancers wait for the models."""
    ctx = _ctx(request)
    body: dict[str, Any] = ctx.backend.health()
    if body["status"] == "ready":
        gate = ctx.gate
        body["queue"] = {
            "running": gate.running,
            "slots": gate.slots,
            "waiting": gate.waiting,
            "capacity": gate.capacity,
        }
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "shanghai-yijia"}


async def list_models(request: Request) -> Response:
    backend = ready_backend(_ctx(request))
    return JSONResponse({"object": "list", "data": [_model_object(m) for m in backend.models()]})


async def get_model(request: Request) -> Response:
    backend = ready_backend(_ctx(request))
    name = request.path_params["model"]
    if not backend.knows(name):
        raise unknown_model(name, backend.models())
    return JSONResponse(_model_object(name))


async def route_texts(request: Request) -> Response:
    """`route --json` over HTTP: {"input": text} gives its object, {"input": [texts]} a list of them."""
    ctx = _ctx(request)
    backend = ready_backend(ctx)
    body = decode_json(await read_body(request, ctx.options.max_body_bytes))
    given = body.get("input", body.get("query"))
    texts = [given] if isinstance(given, str) else given
    if (
        not isinstance(texts, list)
        or not texts
        or len(texts) > MAX_ROUTE_TEXTS
        or not all(isinstance(t, str) and t.strip() for t in texts)
    ):
        raise bad_request(
            f"'input' must be a non-empty text or a list of 1 to {MAX_ROUTE_TEXTS} non-empty texts", "input"
        )
    texts = [t.strip() for t in texts]
    choices = await asyncio.to_thread(backend.route, texts)
    rows = [{"query": t, **c.as_json()} for t, c in zip(texts, choices, strict=True)]
    return JSONResponse(rows[0] if isinstance(given, str) else {"object": "list", "data": rows})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return ApiError(exc.status_code, message, code).response(dict(exc.headers or {}))


def build_app(ctx: ServerContext, log: Callable[[str], None]) -> Starlette:
    """The ASGI app: request log outermost, then CORS (only for the origins configured), then the API key."""
    middleware = [Middleware(RequestLog, log=log, log_questions=ctx.options.log_questions)]
    if ctx.options.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(ctx.options.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type"],
                expose_headers=EXPOSED_HEADERS,
            )
        )
    if ctx.options.api_key is not None:
        middleware.append(Middleware(BearerAuth, key=ctx.options.api_key))
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/route", route_texts, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.ctx = ctx
    return app
