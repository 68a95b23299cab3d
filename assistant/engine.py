"""The Engine protocol: the one seam between the core and a language model (real or fake)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one answer."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    #: Text the answer starts with, given to the model as its own first words and streamed first,
    #: exactly, as the first piece (the session starts answers about the assistant in character,
    #: and answers under a safety rule with the rule's words, this way).
    answer_prefix: str = ""
    #: Nucleus sampling when temperature > 0 (None: the model's own generation config).
    top_p: float | None = None
    #: Seed for sampling when temperature > 0, so a seeded answer can be repeated (None: unseeded).
    seed: int | None = None
    #: The answer ends before the first of these strings (which is not shown).
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterInfo:
    """An installed adapter as the core sees it (read from its manifest)."""

    name: str
    route: str
    path: str
    base_model: str = ""
    created: str = ""
    size_bytes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineInfo:
    """What the status bar and `bench` say about the loaded model."""

    base_model: str
    quantization: str
    device: str
    kernel: str = ""  # e.g. "bnb cpu avx512-bf16" or "bnb cpu (no avx512-bf16: slow path)"


@dataclass
class StreamStats:
    """Filled in by the engine while streaming; read after the stream ends."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    truncated_prompt: bool = False
    first_token_s: float = 0.0
    total_s: float = 0.0
    #: Why the answer ended: "stop" (end of answer or a stop string), "length" (max_new_tokens) or "cancelled".
    finish_reason: str = "stop"
    #: Characters of the conversation (system turn aside) that fitted into the context, and that were given;
    #: they differ when `truncated_prompt` cut turns or text.
    kept_chars: int = 0
    total_chars: int = 0
    #: Prompt tokens whose keys/values were reused from an earlier answer instead of computed.
    cached_tokens: int = 0


class Engine(Protocol):
    """Generates answers on a shared base, optionally through a named LoRA adapter."""

    def info(self) -> EngineInfo:
        """Describe the loaded base model."""
        ...

    def adapters(self) -> list[AdapterInfo]:
        """The adapters that loaded successfully."""
        ...

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        """Yield answer text pieces; `adapter=None` means the plain base. Stops early when `cancel` is set."""
        ...
