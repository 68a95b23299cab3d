"""Kept keys/values across turns (PrefixCache, KVCache) and bounded long input, on tiny random models."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.hf_engine import TransformersEngine
from adapters.kv_cache import KVCache
from adapters.prefix_cache import PrefixCache
from adapters.prompt_fit import fit_prompt, fit_to_context
from assistant.engine import EngineInfo, GenerationParams, Message, StreamStats
from tests.tiny_models import build_tiny_engine_files, tiny_base_checksum

SYSTEM = "You are Yijia, a helpful assistant."
INFO = EngineInfo(base_model="tiny-qwen2", quantization="fp32", device="cpu")
PARAMS = GenerationParams(max_new_tokens=10, temperature=0.0)
QUESTIONS = [
    "hello, who are you? 你好",
    "老人晚上睡不好怎么办",
    "and what about the daytime?",
    "请再说一次",
    "thanks, one more thing: 吃药",
    "ok",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_engine_files(tmp_path_factory.mktemp("tiny-prefix"))


def make_engine(tiny: dict[str, Path], **kwargs: Any) -> TransformersEngine:
    model = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    return TransformersEngine(
        model,
        tokenizer,
        INFO,
        tiny_base_checksum(tiny["base"]),
        tiny["adapters"],
        system_prompt=SYSTEM,
        warn=lambda m: None,
        **kwargs,
    )


@pytest.fixture(scope="module")
def cached(tiny: dict[str, Path]) -> TransformersEngine:
    return make_engine(tiny)


@pytest.fixture(scope="module")
def uncached(tiny: dict[str, Path]) -> TransformersEngine:
    """Every prompt prefilled in full: nothing is ever kept."""
    return make_engine(tiny, kv_cache_mb=0)


def converse(engine: TransformersEngine, adapters: list[str | None]) -> tuple[list[str], list[StreamStats]]:
    """One conversation, turn i asking QUESTIONS[i] through adapters[i]; answers and each turn's stats."""
    history: list[Message] = []
    answers, stats = [], []
    for question, adapter in zip(QUESTIONS, adapters, strict=False):
        history.append(Message("user", question))
        turn = StreamStats()
        text = "".join(engine.stream(history, adapter, PARAMS, stats=turn))
        history.append(Message("assistant", text))
        answers.append(text)
        stats.append(turn)
    return answers, stats


def test_a_conversation_prefills_only_each_new_turn_and_answers_as_a_full_prefill(
    cached: TransformersEngine, uncached: TransformersEngine
) -> None:
    cached.prefixes.clear()
    route = ["alpha"] * len(QUESTIONS)
    answers, stats = converse(cached, list(route))
    expected, full = converse(uncached, list(route))
    assert answers == expected
    assert [s.cached_tokens for s in full] == [0] * len(QUESTIONS)
    for before, now in itertools.pairwise(stats):
        # The whole previous prompt is reused (its answer too, where it re-tokenizes the same way).
        assert now.cached_tokens >= before.prompt_tokens
    assert stats[-1].prompt_tokens - stats[-1].cached_tokens < stats[-1].prompt_tokens // 3


def test_a_route_change_mid_conversation_uses_only_that_adapters_keys_values(
    cached: TransformersEngine, uncached: TransformersEngine
) -> None:
    cached.prefixes.clear()
    route: list[str | None] = ["alpha", "alpha", "beta", None, "alpha", "beta"]
    answers, stats = converse(cached, route)
    assert answers == converse(uncached, route)[0]
    # Turn 3 is beta's first: only the system turn was kept under beta, not alpha's conversation.
    system_len = stats[0].cached_tokens
    assert system_len > 0 and stats[2].cached_tokens < stats[1].prompt_tokens
    assert {adapter for adapter, _ in cached.prefixes.kept()} == {None, "alpha", "beta"}


def test_eviction_under_a_small_limit_keeps_answers_identical(
    cached: TransformersEngine, uncached: TransformersEngine
) -> None:
    cached.prefixes.clear()
    limit = cached.prefixes.limit_bytes
    route: list[str | None] = ["alpha", "beta", "alpha", None, "beta", "alpha"]
    try:
        converse(cached, route)
        one_conversation = max(e.past.nbytes for e in cached.prefixes._entries.values())
        cached.prefixes.clear()
        cached.prefixes.limit_bytes = one_conversation + 1  # room for about one conversation's entry
        answers, _ = converse(cached, route)
        assert cached.prefixes.nbytes <= cached.prefixes.limit_bytes
        assert len(cached.prefixes) < 3  # the other adapters' entries were evicted on the way
    finally:
        cached.prefixes.limit_bytes = limit
    assert answers == converse(uncached, route)[0]


def test_a_cancelled_answer_keeps_what_it_computed_and_the_next_turn_still_matches(
    cached: TransformersEngine, uncached: TransformersEngine
) -> None:
    cached.prefixes.clear()
    history = [Message("user", QUESTIONS[0])]
    stream = cached.stream(history, "beta", GenerationParams(max_new_tokens=50))
    partial = next(stream)
    stream.close()  # the consumer stops reading: the lock is released, the keys/values are kept
    assert len(cached.prefixes) == 1
    history += [Message("assistant", partial), Message("user", QUESTIONS[1])]
    stats = StreamStats()
    text = "".join(cached.stream(history, "beta", PARAMS, stats=stats))
    assert stats.cached_tokens > 0
    assert text == "".join(uncached.stream(history, "beta", PARAMS))


def kv(ids: list[int], layers: int = 2) -> KVCache:
    """A cache holding one distinct value per position (the id itself), to see what a copy holds."""
    cache = KVCache(layers, len(ids))
    states = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 2, -1, 4)
    for layer in range(layers):
        cache.update(states, states, layer)
    return cache


def test_take_copies_the_longest_prefix_under_the_same_adapter_and_leaves_the_last_id() -> None:
    cache = PrefixCache(limit_bytes=10**9)
    cache.keep([1, 2, 3, 4], kv([1, 2, 3, 4]), "a")
    cache.keep([1, 2, 9], kv([1, 2, 9]), "a")
    cache.keep([1, 2, 3, 4, 5, 6], kv([1, 2, 3, 4, 5, 6]), "b")
    assert cache.take([7, 8], "a", 10) == (None, 0)
    past, covered = cache.take([1, 2, 3, 4, 5, 6], "a", 10)
    assert covered == 4 and past is not None and past.length == 4
    assert past.layers[0].keys[0, 0, :, 0].tolist() == [1, 2, 3, 4]
    past.update(torch.full((1, 2, 1, 4), 99.0), torch.full((1, 2, 1, 4), 99.0), 0)  # decoding into the copy...
    again, _ = cache.take([1, 2, 3, 4, 5], "a", 10)
    assert again is not None and again.layers[0].keys[0, 0, :, 0].tolist() == [1, 2, 3, 4]  # ...leaves the entry
    _, covered = cache.take([1, 2, 3, 4], "a", 10)
    assert covered == 3  # the last id is always computed: its logits give the next token
    _, covered = cache.take([1, 2, 3, 4, 5, 6, 7], "b", 10)
    assert covered == 6


def test_keep_drops_what_a_longer_entry_covers_and_evicts_the_least_recently_used() -> None:
    size = kv([1, 2, 3]).nbytes
    cache = PrefixCache(limit_bytes=int(size * 2.5))
    cache.keep([1, 2], kv([1, 2]), None)
    cache.keep([1, 2, 3], kv([1, 2, 3]), None)
    assert cache.kept() == [(None, (1, 2, 3))]  # [1, 2] is a prefix of it: dropped
    cache.keep([5, 6, 7], kv([5, 6, 7]), None)
    cache.take([1, 2, 3, 4], None, 8)  # touching [1, 2, 3] makes [5, 6, 7] the least recently used
    cache.keep([8, 9, 10], kv([8, 9, 10]), "x")
    assert cache.kept() == [(None, (1, 2, 3)), ("x", (8, 9, 10))]
    assert cache.nbytes <= cache.limit_bytes
    cache.keep(list(range(50)), kv(list(range(50))), None)  # larger than the limit alone: not kept
    assert (None, tuple(range(50))) not in cache.kept()
    with pytest.raises(ValueError, match="cover 2 positions"):
        cache.keep([1, 2, 3], kv([1, 2]), None)


def test_kv_cache_appends_in_place_and_grows_when_full() -> None:
    cache = KVCache(1, capacity=2)
    for value in range(5):
        state = torch.full((1, 1, 1, 2), float(value))
        keys, _values = cache.update(state, state, 0)
    assert cache.length == 5 and keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4]
    copy = cache.copy_prefix(3, capacity=8)
    assert copy.length == 3 and copy.layers[0].keys[0, 0, :, 0].tolist() == [0, 1, 2]
    copy.crop(-1)
    assert copy.length == 2 and cache.length == 5


def test_long_paste_is_cut_once_by_tokens_and_reports_what_was_kept(cached: TransformersEngine) -> None:
    tokenizer = cached._tokenizer
    calls: list[int] = []  # characters handed to the tokenizer, call by call
    encode, template = tokenizer.encode, tokenizer.apply_chat_template

    def counting_encode(text: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(text))
        return encode(text, *args, **kwargs)

    def counting_template(messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        calls.append(sum(len(m["content"]) for m in messages))
        return template(messages, *args, **kwargs)

    paste = "".join(f"第{i}行 line {i}; " for i in range(30_000)) + "THE END"
    tokenizer.encode, tokenizer.apply_chat_template = counting_encode, counting_template
    try:
        fitted = fit_prompt(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": paste}], 200)
    finally:
        del tokenizer.encode, tokenizer.apply_chat_template
    text = tokenizer.decode(fitted.ids)
    assert fitted.truncated and 190 <= len(fitted.ids) <= 200
    assert SYSTEM in text and "THE END" in text and "第0行" not in text
    assert fitted.total_chars == len(paste) and 0 < fitted.kept_chars < 1000
    # The paste (450k characters) is cut by characters to what 200 tokens could hold (13 characters
    # is the tiny vocabulary's longest entry) before anything is tokenized, and tokenized whole twice.
    assert len(paste) > 400_000 and sum(calls) <= 4 * 200 * 13


def test_the_engine_reports_kept_and_total_characters(tiny: dict[str, Path]) -> None:
    engine = make_engine(tiny, context_length=128)
    paste = "x " * 5000 + "THE END"
    stats = StreamStats()
    list(engine.stream([Message("user", paste)], None, GenerationParams(max_new_tokens=4), stats=stats))
    assert stats.truncated_prompt and stats.total_chars == len(paste)
    assert 0 < stats.kept_chars < 200 and stats.prompt_tokens <= 128 - 4


def test_context_is_2048_on_cpu_the_models_own_on_cuda_and_never_above_it() -> None:
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32768))
    cuda = EngineInfo(base_model="m", quantization="nf4", device="cuda")
    assert TransformersEngine._context_for(model, INFO, None) == 2048
    assert TransformersEngine._context_for(model, cuda, None) == 32768
    assert TransformersEngine._context_for(model, INFO, 4096) == 4096
    assert TransformersEngine._context_for(model, cuda, 99999) == 32768


def test_a_prompt_that_fits_is_not_cut(cached: TransformersEngine) -> None:
    prompt = fit_to_context(cached._tokenizer, [Message("user", "hi")], SYSTEM, 256, 16)
    assert prompt.kept_chars == prompt.total_chars == 2 and not prompt.truncated
