"""Fitting a conversation into the context budget: oldest turns go first, the system turn stays.

A pasted megabyte must not be tokenized over and over: every turn is first cut by characters to
what could possibly fit (no token is longer than the vocabulary's longest entry), each turn is
tokenized at most once to measure it, and an over-long newest turn is cut by tokens, not by a search
over character counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.chat_format import render_prompt_ids, render_turn_ids, with_system
from assistant.engine import Message

#: Longest token text assumed when the tokenizer has no readable vocabulary.
_FALLBACK_TOKEN_CHARS = 128


@dataclass(frozen=True)
class Fitted:
    """Prompt ids within the budget, and how much of the conversation's text they keep."""

    ids: list[int]
    truncated: bool  # turns, text or the system turn were cut to fit
    kept_chars: int  # characters of the non-system turns that made it into the prompt
    total_chars: int  # characters of the non-system turns given
    newest_turn: int = 0  # where the newest turn starts in `ids` (0: unknown)


@dataclass(frozen=True)
class FittedPrompt:
    """Prompt ids ready for decoding, and what fitting them to the context did."""

    ids: list[int]  # ends with the answer prefix's ids, if any
    truncated: bool  # turns or text were cut to fit
    max_new: int  # new tokens allowed after the prompt
    system_len: int  # how many leading ids are the system turn (0: none, or it did not survive intact)
    kept_chars: int = 0
    total_chars: int = 0
    newest_turn: int = 0  # where the newest turn starts in `ids` (0: unknown)


def longest_token_chars(tokenizer: Any) -> int:
    """An upper bound on the characters one token can stand for (its vocabulary's longest entry)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError, TypeError):
        return _FALLBACK_TOKEN_CHARS
    # Byte-level entries spell a CJK character as three symbols: longer than its text, still a bound.
    return max((len(token) for token in vocab), default=_FALLBACK_TOKEN_CHARS) or _FALLBACK_TOKEN_CHARS


def fit_prompt(
    tokenizer: Any, convo: Sequence[Mapping[str, str]], budget: int, token_chars: int | None = None
) -> Fitted:
    """Prompt ids of `convo` (system turn already in place) in at most `budget` tokens.

    Oldest turns go first (resuming on a user turn); if the newest turn alone is still too long,
    its text is cut from the front, keeping the most recent text. The system turn always stays
    and the chat template stays intact, so the model sees well-formed turns.
    """
    turns = [{"role": m["role"], "content": m["content"]} for m in convo]
    head = turns[:1] if turns and turns[0]["role"] == "system" else []
    rest = turns[len(head) :]
    total = sum(len(t["content"]) for t in rest)
    # A text longer than this needs more than `budget` tokens, so its older part can never be kept.
    most = max(1, budget) * (token_chars or longest_token_chars(tokenizer))
    precut = any(len(t["content"]) > most for t in rest)
    rest = [{"role": t["role"], "content": t["content"][-most:]} for t in rest]

    def render(part: list[dict[str, str]]) -> list[int]:
        return render_prompt_ids(tokenizer, part, None)

    ids = render(head + rest)
    if len(ids) <= budget and not precut:
        return Fitted(ids, False, total, total, _newest_turn_start(tokenizer, head + rest, ids))
    newest = _newest_turns_within(tokenizer, head, rest, budget)
    if len(newest) != len(rest):
        rest = newest
        ids = render(head + rest)
    while len(rest) > 1 and len(ids) > budget:  # the per-turn estimate was short: drop one more
        rest = _resume_on_user(rest[1:])
        ids = render(head + rest)
    if len(ids) > budget and rest:
        rest[-1] = {"role": rest[-1]["role"], "content": _cut_text(tokenizer, head, rest[-1], budget)}
        ids = render(head + rest)
    kept = sum(len(t["content"]) for t in rest)
    if len(ids) > budget:  # even the system turn alone is too long: keep the newest tokens
        return Fitted(ids[len(ids) - budget :], True, kept, total)
    return Fitted(ids, True, kept, total, _newest_turn_start(tokenizer, head + rest, ids))


def _newest_turn_start(tokenizer: Any, turns: list[dict[str, str]], ids: list[int]) -> int:
    """Where the last turn of `turns` starts in `ids` (their rendering), or 0 when the template does not say."""
    if len(turns) < 2:
        return 0
    before = render_turn_ids(tokenizer, turns[:-1])
    return len(before) if len(before) < len(ids) and ids[: len(before)] == before else 0


def _resume_on_user(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """The turns from the first user turn on (a prompt resumes where the user spoke), never empty."""
    if len(turns) > 1 and turns[0]["role"] == "assistant":
        return turns[1:]
    return turns


def _newest_turns_within(
    tokenizer: Any, head: list[dict[str, str]], rest: list[dict[str, str]], budget: int
) -> list[dict[str, str]]:
    """The newest turns whose measured sizes add up to `budget` (at least the newest one).

    Each turn is measured alone, newest first, and measuring stops once the budget is spent, so
    old turns of a long conversation are never tokenized.
    """
    if len(rest) == 1:
        return rest
    base = len(render_turn_ids(tokenizer, head)) if head else 0
    opening = len(render_prompt_ids(tokenizer, head, None)) - base if head else 0  # the open assistant turn
    room = budget - base - opening
    start = len(rest) - 1
    for i in range(len(rest) - 1, -1, -1):
        room -= len(render_turn_ids(tokenizer, [*head, rest[i]])) - base
        if room < 0:
            break
        start = i
    return _resume_on_user(rest[start:])


def _cut_text(tokenizer: Any, head: list[dict[str, str]], turn: dict[str, str], budget: int) -> str:
    """The longest tail of `turn`'s text whose rendered prompt fits `budget`: tokenized once, cut by tokens."""
    text = turn["content"]
    frame = len(render_prompt_ids(tokenizer, [*head, {"role": turn["role"], "content": ""}], None))
    if frame >= budget:  # the system turn alone is too long: the caller keeps the newest tokens instead
        return text
    ids = tokenizer.encode(text, add_special_tokens=False)
    keep = budget - frame
    tail = ""
    for _ in range(4):  # decoded text can re-tokenize a little longer at its edges
        tail = _decode_tail(tokenizer, ids, keep)
        size = len(render_prompt_ids(tokenizer, [*head, {"role": turn["role"], "content": tail}], None))
        if size <= budget or keep == 0:
            break
        keep = max(0, keep - (size - budget))
    return tail


def _decode_tail(tokenizer: Any, ids: list[int], keep: int) -> str:
    """The text of the last `keep` ids, without a character split at its start."""
    if keep <= 0:
        return ""
    text = str(tokenizer.decode(ids[-keep:], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return text.lstrip("\ufffd")


def fit_to_context(
    tokenizer: Any,
    messages: Sequence[Message],
    system_prompt: str | None,
    context: int,
    max_new_tokens: int,
    answer_prefix: str = "",
    token_chars: int | None = None,
) -> FittedPrompt:
    """The prompt for `messages` (with `system_prompt` unless they bring their own) fitted to `context` tokens."""
    # A max_new_tokens as large as the context would leave no room for any prompt at all.
    max_new = max_new_tokens if max_new_tokens < context else max(1, context // 2)
    prefix = tokenizer.encode(answer_prefix, add_special_tokens=False) if answer_prefix else []
    convo = with_system([m.as_dict() for m in messages], system_prompt)
    fitted = fit_prompt(tokenizer, convo, context - max_new - len(prefix), token_chars)
    ids = fitted.ids
    system = render_turn_ids(tokenizer, convo[:1]) if convo and convo[0]["role"] == "system" else []
    shared = len(system) if 0 < len(system) < len(ids) and ids[: len(system)] == system else 0
    return FittedPrompt(
        ids + prefix, fitted.truncated, max_new, shared, fitted.kept_chars, fitted.total_chars, fitted.newest_turn
    )
