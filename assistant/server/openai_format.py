"""The OpenAI chat completion objects: the whole response, the stream's chunks, and our extra fields on them."""

from __future__ import annotations

import json
import time
from typing import Any

from assistant.session import Done, RouteChosen

SSE_DONE = b"data: [DONE]\n\n"


def route_json(chosen: RouteChosen) -> dict[str, Any]:
    """Where the answer went and why: `route --json`'s object, plus whether the client forced it."""
    out: dict[str, Any] = {**chosen.choice.as_json(), "adapter": chosen.adapter, "forced": chosen.forced}
    if chosen.warning:
        out["warning"] = chosen.warning
    return out


def model_name(chosen: RouteChosen | None) -> str:
    """What answered: the adapter's name, or "base"."""
    return (chosen.adapter if chosen else None) or "base"


def usage(done: Done) -> dict[str, int]:
    """Token counts as the engine counted them (0 and 0 when the safety rules answered alone)."""
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.new_tokens,
        "total_tokens": done.prompt_tokens + done.new_tokens,
    }


def finish_reason(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def extras(done: Done, warnings: list[str]) -> dict[str, Any]:
    """Our fields beside OpenAI's: the knowledge entries used, sentences withheld, and warnings."""
    out: dict[str, Any] = {"sources": [p.as_json() for p in done.sources], "withheld": done.withheld}
    if warnings:
        out["warnings"] = warnings
    return out


def completion(
    completion_id: str, chosen: RouteChosen, done: Done, warnings: list[str], created: int | None = None
) -> dict[str, Any]:
    """The non-streaming response body."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model_name(chosen),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.answer, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(done),
            }
        ],
        "usage": usage(done),
        "route": route_json(chosen),
        **extras(done, warnings),
    }


class ChunkWriter:
    """The stream's chunks as server-sent events, all with the same id, created time and model."""

    def __init__(self, completion_id: str, chosen: RouteChosen, include_usage: bool) -> None:
        self.id = completion_id
        self.created = int(time.time())
        self.model = model_name(chosen)
        self.chosen = chosen
        self.include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **more: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None  # OpenAI sends null on every chunk but the last when usage is asked for
        chunk.update(more)
        return chunk

    def first(self) -> bytes:
        """The role, and where the answer went."""
        return event(self._chunk({"role": "assistant", "content": ""}, route=route_json(self.chosen)))

    def text(self, piece: str) -> bytes:
        return event(self._chunk({"content": piece}))

    def last(self, done: Done, warnings: list[str]) -> bytes:
        """The finish reason and our extras; then the usage chunk when asked for; then [DONE]."""
        out = event(self._chunk({}, finish_reason(done), **extras(done, warnings)))
        if self.include_usage:
            tail = self._chunk({}, usage=usage(done))
            tail["choices"] = []
            out += event(tail)
        return out + SSE_DONE


def event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"
