"""The lean forward pass and the kept keys/values on the real bundled base and the shipped adapter (slow)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from adapters.chat_format import render_prompt_ids
from adapters.kv_cache import KVCache
from assistant.config import load_settings
from assistant.engine import GenerationParams, Message, StreamStats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from adapters.wiring import build_engine_parts

    built = build_engine_parts(load_settings(None), show_progress=False)
    assert built.engine.forward_path == "fast forward"
    yield built.engine


def _transformers_logits(engine: Any, adapter: str | None, ids: list[int], split: int, steps: int) -> list[Any]:
    out = []
    with torch.inference_mode(), engine.scoped_model(adapter) as model:
        past = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids[:split]]), past_key_values=past, use_cache=True, logits_to_keep=1)
        chunk = ids[split:]
        for _ in range(steps + 1):
            logits = model(input_ids=torch.tensor([chunk]), past_key_values=past, logits_to_keep=1).logits[:, -1]
            out.append(logits)
            chunk = [int(logits.argmax())]
    return out


@pytest.mark.parametrize("adapter", [None, "caregiving"])
def test_fast_forward_logits_are_bit_identical_to_transformers_on_the_real_model(engine: Any, adapter: Any) -> None:
    from adapters.wiring import system_prompt

    ids = render_prompt_ids(
        engine._tokenizer, [{"role": "user", "content": "老人晚上睡不好怎么办？"}], system_prompt(load_settings(None))
    )
    split = len(ids) - 12
    theirs = _transformers_logits(engine, adapter, ids, split, steps=12)
    past = KVCache(engine._layers, len(ids) + 16)
    fast = engine.fast_forward
    ours = []
    with torch.inference_mode():
        fast(torch.tensor([ids[:split]]), past, adapter)
        chunk = ids[split:]
        for _ in range(13):
            ours.append(fast(torch.tensor([chunk]), past, adapter))
            chunk = [int(ours[-1].argmax())]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_pasted_100k_character_line_answers_within_seconds(engine: Any) -> None:
    from measurement.bench.long_paste import paste

    stats = StreamStats()
    started = time.perf_counter()
    pieces = list(engine.stream([Message("user", paste())], None, GenerationParams(max_new_tokens=8), stats=stats))
    assert pieces and stats.truncated_prompt and stats.prompt_tokens <= engine.context
    assert 0 < stats.kept_chars < 20_000 and stats.total_chars == 100_000
    assert time.perf_counter() - started < 60  # 2,048 tokens on 2 shared cores; was a quarter of an hour
