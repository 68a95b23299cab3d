"""The benchmark prompt: a chat turn that renders to exactly N tokens, identical for our engine and llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.chat_format import render_prompt_ids
from assistant.engine import Message

SYSTEM = "You are a helpful assistant."
# Asks for a long, structured answer so greedy decoding runs the whole token budget without
# meeting end-of-turn; repeated as needed and cut to length.
REQUEST = (
    "请详细介绍居家照护失能老人的方法，包括饮食营养、用药管理、防跌倒、压疮预防、康复训练、睡眠和心理关怀，"
    "每个方面分点写出具体做法、常见误区和注意事项，并给出一天的照护时间表。"
    "Please also add an English summary of every section, with practical tips for family caregivers. "
)


@dataclass(frozen=True)
class BenchPrompt:
    """The messages the engine gets and the token ids llama.cpp gets (the same rendering)."""

    messages: tuple[Message, ...]
    ids: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return len(self.ids)


def exact_prompt(tokenizer: Any, n_tokens: int = 64, system: str = SYSTEM) -> BenchPrompt:
    """The longest cut of REQUEST whose rendered chat prompt has at most `n_tokens` tokens (usually exactly)."""
    text = REQUEST * (n_tokens // 16 + 2)  # always more text than tokens needed

    def render(chars: int) -> list[int]:
        convo = [{"role": "system", "content": system}, {"role": "user", "content": text[:chars]}]
        return render_prompt_ids(tokenizer, convo)

    lo, hi = 1, len(text)
    if len(render(lo)) > n_tokens:
        raise ValueError(f"the chat template alone takes more than {n_tokens} tokens")
    while lo < hi:  # rendered length grows with the text: binary search the longest fitting cut
        mid = (lo + hi + 1) // 2
        if len(render(mid)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    ids = render(lo)
    messages = (Message("system", system), Message("user", text[:lo]))
    return BenchPrompt(messages, tuple(ids))
