"""A pasted 100,000-character line through the session: time to first token and resident memory growth.

The peak resident memory is reset just before the question (Linux), so the growth is this question's
alone: tokenizing and cutting the line, the router and retrieval reading it, the prefill of what fits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from assistant.session import Done
from measurement.bench.machine import peak_rss_mib, rss_mib

CHARACTERS = 100_000


def paste(characters: int = CHARACTERS, seed: int = 0) -> str:
    """A deterministic line of mixed Chinese and English text, like a pasted document."""
    pieces = "老人照护饮食营养用药管理防跌倒睡眠心理关怀的了是在有我 abcdefghij klmnop,.;0123456789"
    rng = random.Random(seed)
    return "".join(rng.choice(pieces) for _ in range(characters))


def _reset_peak_rss() -> bool:
    """Start the peak resident set size over from now (Linux: clear_refs 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def measure_long_paste(session: Any, recorder: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Ask one long line as `ask --json --max-new-tokens 8` would (`recorder` wraps the session's engine)."""
    params = session.params
    session.params = replace(params, max_new_tokens=8)
    text = paste()
    try:
        peak_reset = _reset_peak_rss()
        before = rss_mib()
        started = time.perf_counter()
        done = None
        for event in session.ask(text):
            if isinstance(event, Done):
                done = event
        total = time.perf_counter() - started
    finally:
        session.params = params
    call = recorder.calls[-1]
    kept = done.prompt_kept if done is not None else None
    result = {
        "characters": len(text),
        "context_tokens": getattr(recorder.engine, "context", None),
        "prompt_tokens": call.stats.prompt_tokens,
        # From the question to the first answer token: routing and knowledge retrieval included.
        "first_token_s": call.started - started + call.stats.first_token_s,
        "routing_s": call.started - started,
        "answer_s": total,
        "kept_chars": kept[0] if kept else None,
        "rss_before_mib": before,
        "rss_growth_mib": peak_rss_mib() - before if peak_reset else None,
    }
    log(
        f"[bench] long paste: {result['prompt_tokens']} prompt tokens kept of a {len(text):,}-character line; "
        f"first token {result['first_token_s']:.1f} s; RSS growth {result['rss_growth_mib']} MiB"
    )
    return result
