"""Time to first token turn by turn in one 10-turn conversation: with the keys/values kept between turns, and without.

The engine keeps the keys/values of each prompt and answer, so turn N prefills only its new turn;
without them every turn prefills the whole conversation again. The same turns are replayed with
the cache off (the answers of the first pass as history), so both rows read the same prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from assistant.engine import GenerationParams, Message, StreamStats

#: A caregiving conversation of follow-ups (about 1,500 tokens by turn 10 with 96-token answers).
TURNS = (
    "我妈妈82岁，最近晚上总是睡不好，怎么办？",
    "她白天也经常打瞌睡，这正常吗？",
    "晚饭吃什么对睡眠好一些？",
    "她有高血压，需要注意什么？",
    "那运动呢？适合做哪些运动？",
    "她有时候会忘记自己吃没吃药。",
    "家里怎么布置可以防止夜里起床摔倒？",
    "如果她半夜摔倒了，我该先做什么？",
    "我自己也很累，照顾者怎么调节压力？",
    "谢谢，最后请帮我总结一下重点。",
)


def _turns(engine: Any, system: str, adapter: str | None, new_tokens: int, history: list[Message] | None) -> list[Any]:
    """Ask TURNS in order; with `history`, replay its answers instead of the new ones (same prompts)."""
    messages = [Message("system", system)]
    rows = []
    for index, question in enumerate(TURNS):
        messages.append(Message("user", question))
        stats = StreamStats()
        text = "".join(engine.stream(messages, adapter, GenerationParams(max_new_tokens=new_tokens), stats=stats))
        rows.append(
            {
                "turn": index + 1,
                "ttft_s": stats.first_token_s,
                "prompt_tokens": stats.prompt_tokens,
                "cached_tokens": stats.cached_tokens,
                "answer": text,
            }
        )
        replay = history[2 * index + 2].content if history is not None else text
        messages.append(Message("assistant", replay))
    return rows


def measure_conversation(
    engine: Any, system: str, adapter: str | None, new_tokens: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Rows of (turn, ttft with kept keys/values, ttft prefilling everything, prompt tokens, tokens reused)."""
    warm = [Message("system", system), Message("user", "你好")]
    "".join(engine.stream(warm, adapter, GenerationParams(max_new_tokens=2)))  # first-use costs are not turn 1's
    engine.prefixes.clear()
    kept = _turns(engine, system, adapter, new_tokens, None)
    history = [Message("system", system)]
    for question, row in zip(TURNS, kept, strict=True):
        history += [Message("user", question), Message("assistant", row["answer"])]
    limit = engine.prefixes.limit_bytes
    engine.prefixes.clear()
    engine.prefixes.limit_bytes = 0  # nothing kept: every turn prefills the whole conversation
    try:
        full = _turns(engine, system, adapter, new_tokens, history)
    finally:
        engine.prefixes.limit_bytes = limit
    rows = [
        {
            "turn": a["turn"],
            "prompt_tokens": a["prompt_tokens"],
            "cached_tokens": a["cached_tokens"],
            "ttft_s": a["ttft_s"],
            "ttft_s_full_prefill": b["ttft_s"],
        }
        for a, b in zip(kept, full, strict=True)
    ]
    for row in rows:
        log(
            f"[bench] conversation turn {row['turn']}: {row['prompt_tokens']} prompt tokens "
            f"({row['cached_tokens']} reused), first token {row['ttft_s']:.2f} s, "
            f"{row['ttft_s_full_prefill']:.2f} s prefilling everything"
        )
    first, last = rows[0]["ttft_s"], rows[-1]["ttft_s"]
    return {
        "adapter": adapter,
        "new_tokens": new_tokens,
        "turns": rows,
        "last_vs_first_ttft": last / first if first else None,
        # Turns whose answer came out the same with everything prefilled. Keys/values computed in other
        # slices (a turn at a time, an answer a token at a time) round differently in their last bits, in
        # float32 too, and a near tie between two tokens can then flip; llama.cpp does the same (peer check).
        "same_answers_replayed": [a["turn"] for a, b in zip(kept, full, strict=True) if a["answer"] == b["answer"]],
        "agreed_chars_replayed": [shared_chars(a["answer"], b["answer"]) for a, b in zip(kept, full, strict=True)],
    }


def shared_chars(a: str, b: str) -> int:
    """How many leading characters two answers have in common."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
