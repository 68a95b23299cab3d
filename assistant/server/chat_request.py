"""A chat completion request body, checked field by field the way OpenAI documents it, into what the session needs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from assistant.engine import GenerationParams, Message
from assistant.server.api_errors import ApiError, bad_request

AUTO = "auto"
#: Names that force the plain base model ("general" is the route it serves).
BASE_NAMES = ("base", "general")
#: OpenAI accepts at most four stop sequences.
MAX_STOP = 4
_SYSTEM_ROLES = ("system", "developer")  # "developer" is OpenAI's newer name for the system role
_CHAT_ROLES = ("user", "assistant")


@dataclass(frozen=True)
class ChatRequest:
    """A valid request: the question, the conversation before it, the client's instructions, how to sample."""

    model: str
    question: str
    history: tuple[Message, ...] = ()
    instructions: str = ""  # the client's system message(s), added to the identity prompt, never replacing it
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # after clamping to the server's limit
    requested_max_tokens: int | None = None  # what the client asked for, when it was clamped
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def clamped(self) -> bool:
        return self.requested_max_tokens is not None

    def params(self, defaults: GenerationParams, limit: int) -> GenerationParams:
        """The session's sampling settings with this request's values in their place."""
        return replace(
            defaults,
            max_new_tokens=self.max_tokens or min(defaults.max_new_tokens, limit),
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=self.top_p if self.top_p is not None else defaults.top_p,
            seed=self.seed if self.seed is not None else defaults.seed,
            stop=self.stop or defaults.stop,
        )


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    if not text.strip():
        raise bad_request("the body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="invalid_json"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the body must be a JSON object, not {type(body).__name__}", code="invalid_json")
    return body


def _text_of(content: Any, param: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(
                    f"content part {i} is {kind!r}: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                    f"{param}[{i}]",
                    "invalid_content",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request("content must be a string or a list of text parts", param, "invalid_content")


def _messages(body: dict[str, Any]) -> tuple[list[Message], list[str]]:
    """(user/assistant turns in order, system instructions) from `messages`."""
    raw = body.get("messages")
    if raw is None:
        raise bad_request("missing required parameter 'messages'", "messages", "missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    turns: list[Message] = []
    instructions: list[str] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role not in (*_SYSTEM_ROLES, *_CHAT_ROLES):
            raise bad_request(
                f"{where}.role is {role!r}: use 'system', 'user' or 'assistant' (this assistant calls no tools)",
                f"{where}.role",
                "invalid_role",
            )
        text = _text_of(message.get("content"), f"{where}.content")
        if role in _SYSTEM_ROLES:
            if text.strip():
                instructions.append(text.strip())
        else:
            turns.append(Message(role, text))
    return turns, instructions


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low:g} and {high:g}, not {value:g}", name)
    return float(value)


def _whole(body: dict[str, Any], name: str, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be a whole number", name)
    if low is not None and value < low:
        raise bad_request(f"'{name}' must be at least {low}, not {value}", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise bad_request(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return tuple(items)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false", name)
    return value


def _unsupported(body: dict[str, Any]) -> None:
    """Features this assistant does not have are refused, so a client never mistakes silence for support."""
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"'{name}' is not supported: this assistant calls no tools", name, "unsupported")
    if body.get("n") not in (None, 1):
        raise bad_request("only n = 1 is supported (one answer per request)", "n", "unsupported")
    if body.get("logprobs"):
        raise bad_request("'logprobs' is not supported", "logprobs", "unsupported")


def parse_chat_request(body: dict[str, Any], max_tokens_limit: int) -> ChatRequest:
    """A checked ChatRequest, or an ApiError(400) naming the parameter at fault."""
    turns, instructions = _messages(body)
    if not turns or turns[-1].role != "user":
        raise bad_request("the last message must be the user's question (role 'user')", "messages", "invalid_role")
    question = turns[-1].content.strip()
    if not question:
        raise bad_request("the user's question is empty", f"messages[{len(body['messages']) - 1}].content")
    model = body.get("model", AUTO)
    if model is None:
        model = AUTO
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a model name: 'auto', 'base' or an adapter (GET /v1/models)", "model")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    _unsupported(body)
    # max_completion_tokens is OpenAI's newer name; max_tokens stays accepted.
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = _whole(body, name, low=1)
    return ChatRequest(
        model=model.strip(),
        question=question,
        history=tuple(turns[:-1]),
        instructions="\n\n".join(instructions),
        stream=_flag(body, "stream"),
        include_usage=_flag(options or {}, "include_usage"),
        max_tokens=None if asked is None else min(asked, max_tokens_limit),
        requested_max_tokens=asked if asked is not None and asked > max_tokens_limit else None,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        seed=_whole(body, "seed"),
        stop=_stop(body),
    )


def unknown_model(model: str, known: list[str]) -> ApiError:
    """404 naming the models there are."""
    return ApiError(
        404,
        f"the model {model!r} does not exist here; use one of: {', '.join(known)}",
        "model_not_found",
        "model",
    )
