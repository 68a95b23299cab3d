"""Fitting a conversation into the model's context: oldest turns go first, the system turn stays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.chat_format import render_prompt_ids, render_turn_ids, with_system
from assistant.engine import Message


@dataclass(frozen=True)
class FittedPrompt:
    """Prompt ids ready for decoding, and what fitting them to the context did."""

    ids: list[int]  # ends with the answer prefix's ids, if any
    truncated: bool  # turns or text were cut to fit
    max_new: int  # new tokens allowed after the prompt
    system_len: int  # how many leading ids are the system turn (0: none, or it did not survive intact)


def fit_prompt(tokenizer: Any, convo: Sequence[Mapping[str, str]], budget: int) -> tuple[list[int], bool]:
    """Prompt ids of `convo` (system turn already in place) in at most `budget` tokens, and whether it was cut.

    Oldest turns go first; if the newest turn alone is still too long, its text is cut from
    the front (keeping the most recent text). The system turn always stays, and the chat
    template stays intact, so the model still sees well-formed turns.
    """
    turns = [{"role": m["role"], "content": m["content"]} for m in convo]

    def render(part: list[dict[str, str]]) -> list[int]:
        return render_prompt_ids(tokenizer, part, None)

    ids = render(turns)
    if len(ids) <= budget:
        return ids, False
    head = turns[:1] if turns and turns[0]["role"] == "system" else []
    rest = turns[len(head) :]
    while len(rest) > 1 and len(ids) > budget:
        rest = rest[1:]
        if len(rest) > 1 and rest[0]["role"] == "assistant":
            rest = rest[1:]  # resume on a user turn, as the conversation did
        ids = render(head + rest)
    if len(ids) > budget and rest:
        role, text = rest[-1]["role"], rest[-1]["content"]

        def fits(keep: int) -> list[int] | None:
            candidate = render([*head, {"role": role, "content": text[len(text) - keep :]}])
            return candidate if len(candidate) <= budget else None

        # Binary search for the longest tail of the text that fits; a token rarely spans more
        # than 32 characters, which bounds how much text is ever tokenized.
        lo, hi = 0, min(len(text), budget * 32)
        best = fits(0)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = fits(mid)
            if candidate is None:
                hi = mid - 1
            else:
                lo, best = mid, candidate
        if best is not None:
            ids = best
    if len(ids) > budget:  # even the system turn alone is too long: keep the newest tokens
        ids = ids[len(ids) - budget :]
    return ids, True


def fit_to_context(
    tokenizer: Any,
    messages: Sequence[Message],
    system_prompt: str | None,
    context: int,
    max_new_tokens: int,
    answer_prefix: str = "",
) -> FittedPrompt:
    """The prompt for `messages` (with `system_prompt` unless they bring their own) fitted to `context` tokens."""
    # A max_new_tokens as large as the context would leave no room for any prompt at all.
    max_new = max_new_tokens if max_new_tokens < context else max(1, context // 2)
    prefix = tokenizer.encode(answer_prefix, add_special_tokens=False) if answer_prefix else []
    convo = with_system([m.as_dict() for m in messages], system_prompt)
    ids, truncated = fit_prompt(tokenizer, convo, context - max_new - len(prefix))
    system = render_turn_ids(tokenizer, convo[:1]) if convo and convo[0]["role"] == "system" else []
    shared = len(system) if 0 < len(system) < len(ids) and ids[: len(system)] == system else 0
    return FittedPrompt(ids + prefix, truncated, max_new, shared)
