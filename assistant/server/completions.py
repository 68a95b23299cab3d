"""POST /v1/chat/completions: wait for the engine, answer through a fresh session, send JSON or a stream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from assistant.server.answer_run import AnswerRun, ClientGone, unless_gone, wait_for_disconnect
from assistant.server.api_errors import SERVER_ERROR, ApiError, busy
from assistant.server.backend import Backend
from assistant.server.chat_request import ChatRequest, decode_json, parse_chat_request, unknown_model
from assistant.server.gate import EngineGate, QueueFull
from assistant.server.openai_format import ChunkWriter, completion, event
from assistant.server.options import ServeOptions
from assistant.server.request_log import CLIENT_CLOSED, RequestRecord, header_value, record_of
from assistant.session import ChatSession, Done, Failed, RouteChosen, Token

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


@dataclass
class ServerContext:
    """What every handler shares: the models, the engine's queue, the options, the log."""

    backend: Backend
    gate: EngineGate
    options: ServeOptions


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to be larger than `limit` bytes."""
    too_big = ApiError(
        413, f"the request body is larger than this server's limit of {limit / 2**20:g} MB", "request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_big
        parts.append(part)
    return b"".join(parts)


def ready_backend(ctx: ServerContext) -> Backend:
    """The backend once its models are loaded; 503 + Retry-After while they load."""
    if ctx.backend.state != "ready":
        raise busy("the models are still loading; try again shortly (GET /health says when ready)", 5, "loading")
    return ctx.backend


async def chat_completions(request: Request) -> Any:
    ctx: ServerContext = request.app.state.ctx
    record = record_of(request.scope)
    backend = ready_backend(ctx)
    chat = parse_chat_request(decode_json(await read_body(request, ctx.options.max_body_bytes)), ctx.options.max_tokens)
    record.question = chat.question
    if not backend.knows(chat.model):
        raise unknown_model(chat.model, backend.models())
    session = backend.session(chat.model, chat.instructions)
    session.restore(list(chat.history), None)
    return AnswerResponse(ctx, chat, session, record)


def _warnings(chat: ChatRequest, done: Done | None) -> list[str]:
    out = []
    if chat.clamped:
        out.append(
            f"max_tokens {chat.requested_max_tokens} is above this server's limit; {chat.max_tokens} were allowed"
        )
    if done is not None and done.truncated_prompt:
        out.append("the conversation was longer than the model's context; its oldest part was left out")
    return out


class AnswerResponse:
    """An ASGI response that queues for the engine, runs the answer and sends it; a client that leaves stops it."""

    def __init__(self, ctx: ServerContext, chat: ChatRequest, session: ChatSession, record: RequestRecord) -> None:
        self.ctx = ctx
        self.chat = chat
        self.session = session
        self.record = record
        self.completion_id = f"chatcmpl-{record.id}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.create_task(wait_for_disconnect(receive))  # type: ignore[arg-type]
        try:
            await self._respond(send, gone)
        except ClientGone:
            self.record.notes.append("client-left")
            if not self.record.status:
                self.record.status = CLIENT_CLOSED
        finally:
            gone.cancel()

    async def _respond(self, send: Send, gone: asyncio.Task[None]) -> None:
        gate = self.ctx.gate
        queued = time.perf_counter()
        try:
            await unless_gone(gate.enter(), gone)
        except QueueFull:
            error = busy(
                f"all {gate.capacity} places in the queue are taken; try again later",
                gate.retry_after_s(),
                "queue_full",
            )
            await self._send_json(send, error.status, error.body(), error.headers)
            return
        self.record.queue_ms = (time.perf_counter() - queued) * 1000.0
        try:
            params = self.chat.params(self.session.params, self.ctx.options.max_tokens)
            run = AnswerRun(self.session, self.chat.question, params, on_end=lambda held: gate.release(held))
            run.start()
        except BaseException:
            gate.release()  # never started: the engine is still free
            raise
        try:
            if self.chat.stream:
                await self._stream(send, run, gone)
            else:
                await self._whole(send, run, gone)
        finally:
            if not run.finished:
                run.cancel.set()  # the client left or the server is stopping: free the engine within a token

    def _headers(self, chosen: RouteChosen | None, done: Done | None = None) -> dict[str, str]:
        headers = {"x-queue-ms": f"{self.record.queue_ms or 0:.0f}"}
        if chosen is not None:
            headers["x-route"] = header_value(chosen.choice.route)
            headers["x-adapter"] = header_value(chosen.adapter or "base")
            headers["x-route-confidence"] = f"{chosen.choice.confidence:.4f}"
        if self.chat.clamped:
            headers["x-max-tokens-clamped"] = str(self.chat.max_tokens)
        if done is not None and done.truncated_prompt:
            headers["x-prompt-truncated"] = "true"
        return headers

    def _note(self, chosen: RouteChosen | None, done: Done | None) -> None:
        if chosen is not None:
            self.record.route, self.record.adapter = chosen.choice.route, chosen.adapter
        if done is not None:
            self.record.prompt_tokens, self.record.completion_tokens = done.prompt_tokens, done.new_tokens

    async def _send_json(self, send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.record.status = status
        response = JSONResponse(body, status_code=status, headers=headers)
        await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})

    async def _failed(self, send: Send, failed: Failed | None, chosen: RouteChosen | None) -> None:
        why = failed.error if failed else "the answer ended without completing"
        error = ApiError(500, f"the engine failed on this request: {why}", "engine_error", kind=SERVER_ERROR)
        self.record.notes.append(f"error={why!r}")
        await self._send_json(send, 500, error.body(), self._headers(chosen))

    async def _whole(self, send: Send, run: AnswerRun, gone: asyncio.Task[None]) -> None:
        chosen: RouteChosen | None = None
        while True:
            item = await unless_gone(run.next_event(), gone)
            if isinstance(item, RouteChosen):
                chosen = item
                self._note(chosen, None)
            elif isinstance(item, Done) and chosen is not None:
                self._note(chosen, item)
                body = completion(self.completion_id, chosen, item, _warnings(self.chat, item))
                await self._send_json(send, 200, body, self._headers(chosen, item))
                return
            elif not isinstance(item, Token):
                await self._failed(send, item if isinstance(item, Failed) else None, chosen)
                return

    async def _stream(self, send: Send, run: AnswerRun, gone: asyncio.Task[None]) -> None:
        chosen: RouteChosen | None = None
        item = await unless_gone(run.next_event(), gone)
        while isinstance(item, RouteChosen):  # the headers carry the route, so they wait for it
            chosen = item
            self._note(chosen, None)
            item = await unless_gone(run.next_event(), gone)
        if chosen is None or not isinstance(item, Token | Done):
            await self._failed(send, item if isinstance(item, Failed) else None, chosen)
            return
        self.record.status = 200
        headers = [(k.encode(), v.encode("latin-1")) for k, v in {**SSE_HEADERS, **self._headers(chosen)}.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        writer = ChunkWriter(self.completion_id, chosen, self.chat.include_usage)
        await self._body(send, writer.first())
        while True:
            if isinstance(item, Token):
                await self._body(send, writer.text(item.text))
            elif isinstance(item, Done):
                self._note(chosen, item)
                await self._body(send, writer.last(item, _warnings(self.chat, item)), more=False)
                return
            else:  # failed after the first words: the stream ends with OpenAI's error event
                why = item.error if isinstance(item, Failed) else "the answer ended without completing"
                self.record.notes.append(f"error={why!r}")
                error = ApiError(500, f"the engine failed mid-answer: {why}", "engine_error", kind=SERVER_ERROR)
                await self._body(send, event(error.body()) + b"data: [DONE]\n\n", more=False)
                return
            item = await unless_gone(run.next_event(), gone)

    @staticmethod
    async def _body(send: Send, data: bytes, more: bool = True) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})
