"""The bench's product part: one real session (router, rules, knowledge, engine, adapters), timed as users meet it.

Rows: time to first token by turn in a 10-turn conversation; whole answers per route next to
llama.cpp on the same prompts; a pasted 100,000-character line.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any

from assistant.config import Settings
from measurement.bench.conversation import measure_conversation
from measurement.bench.long_paste import measure_long_paste
from measurement.bench.product_answers import RecordingEngine, measure_answers

#: Tokens per whole answer (the comparison users reported was made at 128).
ANSWER_TOKENS = 128


@contextmanager
def packed_attention(engine: Any) -> Iterator[None]:
    """Single-token attention with the query heads packed onto their key/value heads (a prototype: other rounding)."""
    fast = engine.fast_forward
    if fast is None:
        yield
        return
    fast.pack_single_query = True
    try:
        yield
    finally:
        fast.pack_single_query = False


def _peer(settings: Settings, threads: int, notes: list[str]) -> Any | None:
    from measurement.bench.generation_part import peer_gguf
    from measurement.bench.peer import INSTALL_HINT, LlamaCppPeer, llama_cpp_version

    gguf, why = peer_gguf(settings)
    if gguf is None or llama_cpp_version() is None:
        notes.append(f"whole answers without llama.cpp: {why if gguf is None else INSTALL_HINT}")
        return None
    return LlamaCppPeer(gguf, threads, n_ctx=4096)


def product_part(settings: Settings, quick: bool, log: Callable[[str], None], notes: list[str]) -> dict[str, Any]:
    """Conversation, whole answers vs llama.cpp, long paste; the engine as wired, with the installed adapters."""
    import torch

    from adapters.wiring import build_session, system_prompt

    log("[bench] product: loading the session (router, rules, knowledge, engine)...")
    session = build_session(
        settings.with_overrides(max_new_tokens=ANSWER_TOKENS), keep_history=False, sticky=False, progress=log
    )
    engine: Any = session.engine
    recorder = RecordingEngine(engine)
    session.engine = recorder
    adapters = [a.name for a in engine.adapters()]
    result: dict[str, Any] = {"forward": engine.forward_path, "context_tokens": engine.context, "adapters": adapters}
    result["conversation"] = measure_conversation(
        engine, system_prompt(settings), adapters[0] if adapters else None, 48 if quick else 96, log
    )
    variants: dict[str, Callable[[], AbstractContextManager[Any]]] = {"ours": nullcontext}
    if not quick and engine.fast_forward is not None:
        variants["transformers_forward"] = engine.transformers_forward
        variants["packed_attention"] = partial(packed_attention, engine)
    peer = _peer(settings, torch.get_num_threads(), notes)
    result["answers"] = measure_answers(session, recorder, peer, 1 if quick else 3, log, variants)
    del peer
    gc.collect()
    result["long_paste"] = measure_long_paste(session, recorder, log)
    return result
