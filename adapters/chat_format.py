"""The one chat-formatting function, shared by inference (engine) and training (label masking)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

IGNORE_INDEX = -100  # label value the loss ignores


def with_system(messages: Sequence[Mapping[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Messages as plain dicts, with `system_prompt` first unless a system turn is already there.

    Qwen's template injects "You are Qwen, created by Alibaba Cloud" when no system turn is
    given, so the product always supplies its own.
    """
    out = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def _ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    if isinstance(rendered, Mapping):  # some tokenizer versions return a BatchEncoding regardless
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


def render_prompt_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], system_prompt: str | None = None
) -> list[int]:
    """Token ids of a conversation ending in an open assistant turn, ready for generation."""
    return _ids(tokenizer, with_system(messages, system_prompt), add_generation_prompt=True)


def render_turn_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of closed turns (no open assistant turn): a prefix of any longer conversation's ids."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    return _ids(tokenizer, turns, add_generation_prompt=False)


def build_supervised_example(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels where only assistant tokens carry a label.

    Each assistant turn's tokens are found as the difference between the conversation
    rendered up to that turn (with an open assistant prompt) and rendered through it, so
    the masking follows whatever chat template the tokenizer carries.
    """
    convo = with_system(messages, system_prompt)
    input_ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(convo):
        if message["role"] != "assistant":
            continue
        prefix = _ids(tokenizer, convo[:i], add_generation_prompt=True)
        through = _ids(tokenizer, convo[: i + 1], add_generation_prompt=False)
        if through[: len(prefix)] != prefix:
            raise ValueError("chat template is not prefix-stable; cannot mask labels")
        if len(prefix) < len(input_ids) or prefix[: len(input_ids)] != input_ids:
            raise ValueError("chat template re-renders earlier turns; cannot mask labels")
        new_context = prefix[len(input_ids) :]
        answer = through[len(prefix) :]
        input_ids += new_context + answer
        labels += [IGNORE_INDEX] * len(new_context) + answer
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
