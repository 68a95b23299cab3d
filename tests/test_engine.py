"""TransformersEngine on a tiny random Qwen2 with two tiny LoRA adapters (seconds, no real model)."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.base_model import INFERENCE_ONLY_ATTR
from adapters.chat_format import render_prompt_ids, render_turn_ids, with_system
from adapters.hf_engine import TransformersEngine
from adapters.incremental_decoder import IncrementalDecoder
from adapters.prompt_fit import fit_prompt
from adapters.registry import read_manifest, write_manifest
from assistant.engine import EngineInfo, GenerationParams, Message, StreamStats
from assistant.errors import GenerationFailed, UsageError
from tests.tiny_models import build_tiny_engine_files, build_tiny_lora, tiny_base_checksum

SYSTEM = "You are Yijia, a helpful assistant."
QUESTION = [Message("user", "hello, who are you? 你好")]
GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)
INFO = EngineInfo(base_model="tiny-qwen2", quantization="fp32", device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base and an adapters dir holding two LoRAs trained on it (random weights)."""
    return build_tiny_engine_files(tmp_path_factory.mktemp("tiny"))


def load(base: Path, **kwargs: Any) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **kwargs)
    return model, AutoTokenizer.from_pretrained(base)


def make_engine(
    tiny: dict[str, Path], adapters: Path | None = None, **kwargs: Any
) -> tuple[TransformersEngine, list[str]]:
    warnings: list[str] = []
    model, tokenizer = load(tiny["base"], **kwargs.pop("load", {}))
    engine = TransformersEngine(
        model,
        tokenizer,
        kwargs.pop("info", INFO),
        tiny_base_checksum(tiny["base"]),
        adapters or tiny["adapters"],
        system_prompt=SYSTEM,
        warn=warnings.append,
        **kwargs,
    )
    return engine, warnings


@pytest.fixture(scope="module")
def engine(tiny: dict[str, Path]) -> TransformersEngine:
    built, warnings = make_engine(tiny)
    assert warnings == []
    return built


def answer(engine: TransformersEngine, adapter: str | None, params: GenerationParams = GREEDY) -> str:
    return "".join(engine.stream(QUESTION, adapter, params))


def prompt_ids(tokenizer: Any, messages: list[Message] = QUESTION) -> torch.Tensor:
    return torch.tensor([render_prompt_ids(tokenizer, [m.as_dict() for m in messages], SYSTEM)])


def greedy_ids(model: Any, tokenizer: Any, n: int = GREEDY.max_new_tokens) -> list[int]:
    """Reference tokens from transformers' own generate(), cut at the first stop token."""
    ids = prompt_ids(tokenizer)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    new = [int(t) for t in out[0, ids.shape[1] :]]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for i, token in enumerate(new):
        if token in stops:
            return new[:i]
    return new


def text_of(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def test_both_adapters_load_and_are_described(engine: TransformersEngine, tiny: dict[str, Path]) -> None:
    assert [(a.name, a.route) for a in engine.adapters()] == [("alpha", "route-a"), ("beta", "route-b")]
    assert all(a.size_bytes > 0 for a in engine.adapters())
    assert engine.info() == INFO
    assert getattr(engine._model, INFERENCE_ONLY_ATTR)  # warmed up: training must refuse this instance


def test_switching_adapters_changes_the_output(engine: TransformersEngine) -> None:
    base, alpha, beta = answer(engine, None), answer(engine, "alpha"), answer(engine, "beta")
    assert len({base, alpha, beta}) == 3
    # Switching back and forth is deterministic: set_adapter leaves no residue.
    assert answer(engine, "alpha") == alpha
    assert answer(engine, None) == base
    assert answer(engine, "beta") == beta


def test_adapter_output_matches_generate_through_that_adapter(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    for name in ("alpha", "beta"):
        with engine.scoped_model(name) as peft_model:
            expected = text_of(tokenizer, greedy_ids(peft_model, tokenizer))
        assert answer(engine, name) == expected


def test_base_route_is_bit_exact_with_disabled_adapters_and_with_a_plain_model(
    engine: TransformersEngine, tiny: dict[str, Path]
) -> None:
    peft_model, tokenizer = engine._model, engine._tokenizer
    plain, _ = load(tiny["base"])
    ids = prompt_ids(tokenizer)
    with torch.inference_mode(), peft_model.disable_adapter():
        disabled_logits = peft_model(input_ids=ids).logits
        disabled_tokens = greedy_ids(peft_model, tokenizer)
    with torch.inference_mode():
        plain_logits = plain(input_ids=ids).logits
    assert torch.equal(disabled_logits, plain_logits)
    plain_tokens = greedy_ids(plain, tokenizer)
    assert disabled_tokens == plain_tokens

    stats = StreamStats()
    text = "".join(engine.stream(QUESTION, None, GREEDY, stats=stats))
    assert text == text_of(tokenizer, plain_tokens)
    assert stats.new_tokens == len(plain_tokens)


def test_answer_prefix_is_streamed_first_and_the_model_continues_after_it(engine: TransformersEngine) -> None:
    peft_model, tokenizer = engine._model, engine._tokenizer
    prefix = "我是颐家小助手，"
    ids = torch.cat([prompt_ids(tokenizer), torch.tensor([tokenizer.encode(prefix, add_special_tokens=False)])], 1)
    with torch.inference_mode(), peft_model.disable_adapter():
        out = peft_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    continuation = [int(t) for t in out[0, ids.shape[1] :]]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    continuation = continuation[: next((i for i, t in enumerate(continuation) if t in stops), len(continuation))]

    stats = StreamStats()
    params = GenerationParams(max_new_tokens=8, temperature=0.0, answer_prefix=prefix)
    pieces = list(engine.stream(QUESTION, None, params, stats=stats))
    assert pieces[0] == prefix
    assert "".join(pieces[1:]) == text_of(tokenizer, continuation)
    assert stats.new_tokens == len(continuation)  # the prefix is prompt, not generated
    assert stats.prompt_tokens == ids.shape[1]


def test_kept_keys_values_are_per_adapter_and_change_no_answer(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.prefixes.clear()
    first = {name: answer(engine, name) for name in (None, "alpha", "beta")}
    assert sorted(str(adapter) for adapter, _ in engine.prefixes.kept()) == ["None", "alpha", "beta"]
    stats = StreamStats()
    "".join(engine.stream(QUESTION, "alpha", GREEDY, stats=stats))
    # The same question again: the system turn is reused; the question itself is computed in one
    # piece, as the first time, so the answer cannot differ.
    system = render_turn_ids(engine._tokenizer, [{"role": "system", "content": SYSTEM}])
    assert stats.cached_tokens == len(system)
    assert {name: answer(engine, name) for name in (None, "alpha", "beta")} == first  # reused, not mutated

    # The same decode with the whole prompt encoded every time:
    monkeypatch.setattr(engine.prefixes, "take", lambda ids, adapter, capacity, upto=0: (None, 0))
    monkeypatch.setattr(engine.prefixes, "keep", lambda ids, past, adapter: None)
    assert {name: answer(engine, name) for name in (None, "alpha", "beta")} == first


def test_base_route_equals_an_engine_without_adapters(engine: TransformersEngine, tiny: dict[str, Path]) -> None:
    empty = tiny["root"] / "no-adapters"
    empty.mkdir(exist_ok=True)
    bare, warnings = make_engine(tiny, empty)
    assert bare.adapters() == [] and warnings == []
    assert answer(bare, None) == answer(engine, None)


def test_stats_are_filled(engine: TransformersEngine) -> None:
    stats = StreamStats()
    pieces = list(engine.stream(QUESTION, "alpha", GREEDY, stats=stats))
    assert stats.prompt_tokens == prompt_ids(engine._tokenizer).shape[1]
    assert 0 < stats.new_tokens <= GREEDY.max_new_tokens
    assert 0 < stats.first_token_s <= stats.total_s
    assert not stats.truncated_prompt
    assert pieces and all(pieces)


def test_a_system_turn_in_the_messages_replaces_the_default(engine: TransformersEngine) -> None:
    stats = StreamStats()
    own = [Message("system", "x"), *QUESTION]
    list(engine.stream(own, None, GREEDY, stats=stats))
    expected = render_prompt_ids(engine._tokenizer, [m.as_dict() for m in own], SYSTEM)
    assert stats.prompt_tokens == len(expected) < prompt_ids(engine._tokenizer).shape[1]


def test_foreign_and_broken_adapters_are_skipped_with_warnings(tiny: dict[str, Path]) -> None:
    adapters = tiny["root"] / "mixed"
    adapters.mkdir()
    foreign = adapters / "foreign"
    build_tiny_lora(tiny["base"], foreign, "foreign", "route-f", 3)
    write_manifest(foreign, **{**read_manifest(foreign), "base_checksum": "f" * 64, "base_model": "other-base"})
    build_tiny_lora(tiny["base"], adapters / "broken", "broken", "route-x", 4)
    # A well-formed file whose tensors have the wrong shapes: the registry passes it, the load fails.
    weights = adapters / "broken" / "adapter_model.safetensors"
    save_file({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in load_file(weights).items()}, weights)
    build_tiny_lora(tiny["base"], adapters / "torn", "torn", "route-t", 6)
    torn = adapters / "torn" / "adapter_model.safetensors"
    torn.write_bytes(torn.read_bytes()[:-10])  # truncated: the registry refuses it before any load
    build_tiny_lora(tiny["base"], adapters / "good", "good", "route-g", 5)
    (adapters / "unreadable").mkdir()
    (adapters / "unreadable" / "manifest.json").write_text("{nope", encoding="utf-8")

    engine, warnings = make_engine(tiny, adapters)

    assert [a.name for a in engine.adapters()] == ["good"]
    assert list(engine._model.peft_config) == ["good"]  # nothing of the failed load lingers
    assert len(warnings) == 4
    assert any(("'torn'" in w and "truncated" in w) or ("'torn'" in w and "damaged" in w) for w in warnings)
    assert any("unreadable" in w and "not valid JSON" in w for w in warnings)  # registry problems pass through
    foreign_warning = next(w for w in warnings if "'foreign'" in w)
    assert "other-base" in foreign_warning and "tiny-qwen2" in foreign_warning
    assert "ffffffffffff" in foreign_warning and tiny_base_checksum(tiny["base"])[:12] in foreign_warning
    assert any("'broken'" in w and "failed" in w for w in warnings)
    # The broken one was the first load attempt (sorted first); what it left behind must not
    # disturb the base route.
    plain, tokenizer = load(tiny["base"])
    assert answer(engine, None) == text_of(tokenizer, greedy_ids(plain, tokenizer))
    assert answer(engine, "good") != answer(engine, None)


def test_unknown_adapter_raises_usage_error_before_streaming(engine: TransformersEngine) -> None:
    with pytest.raises(UsageError, match="'nope'") as info:
        engine.stream(QUESTION, "nope", GREEDY)
    assert "alpha" in info.value.hint


def test_cancel_stops_promptly_and_releases_the_lock(engine: TransformersEngine) -> None:
    long = GenerationParams(max_new_tokens=200)
    cancel = threading.Event()
    stats = StreamStats()
    pieces: list[str] = []
    for piece in engine.stream(QUESTION, "alpha", long, cancel=cancel, stats=stats):
        pieces.append(piece)
        cancel.set()  # e.g. the user pressed Esc after the first piece
    assert len(pieces) == 1
    assert stats.new_tokens <= 8  # a piece may wait for a few tokens of one character, no more

    already = threading.Event()
    already.set()
    assert list(engine.stream(QUESTION, None, long, cancel=already)) == []
    assert answer(engine, None)  # the lock was released both times


def test_cancel_from_another_thread(engine: TransformersEngine) -> None:
    cancel = threading.Event()
    stats = StreamStats()
    timer = threading.Timer(0.05, cancel.set)
    timer.start()
    # A sleep per piece stands in for a slow consumer; without cancel this would run 2000 steps.
    for _ in engine.stream(QUESTION, "beta", GenerationParams(max_new_tokens=2000), cancel=cancel, stats=stats):
        threading.Event().wait(0.005)
    timer.join()
    assert stats.new_tokens < 2000


def test_concurrent_streams_are_serialized_and_match_sequential(engine: TransformersEngine) -> None:
    expected = {name: answer(engine, name) for name in (None, "alpha", "beta")}
    results: dict[str | None, list[str]] = {name: [] for name in expected}

    def run(name: str | None) -> None:
        for _ in range(3):
            results[name].append(answer(engine, name))

    threads = [threading.Thread(target=run, args=(name,)) for name in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {name: [text] * 3 for name, text in expected.items()}


def test_a_second_stream_on_the_same_thread_is_refused_not_deadlocked(engine: TransformersEngine) -> None:
    first = engine.stream(QUESTION, "alpha", GenerationParams(max_new_tokens=50))
    next(first)
    with pytest.raises(GenerationFailed, match="still streaming"):
        next(engine.stream(QUESTION, "beta", GREEDY))
    first.close()  # closing releases the lock
    assert answer(engine, "beta")


def test_long_prompt_is_truncated_keeping_system_and_newest_text(tiny: dict[str, Path]) -> None:
    engine, _ = make_engine(tiny, context_length=256)
    history = [Message("user" if i % 2 == 0 else "assistant", f"old turn {i} " * 5) for i in range(20)]
    history.append(Message("user", "the newest question"))
    params = GenerationParams(max_new_tokens=16)
    stats = StreamStats()
    list(engine.stream(history, None, params, stats=stats))
    assert stats.truncated_prompt
    assert stats.prompt_tokens <= 256 - 16

    tokenizer = engine._tokenizer
    convo = with_system([m.as_dict() for m in history], SYSTEM)
    fitted = fit_prompt(tokenizer, convo, 250)
    ids, cut = fitted.ids, fitted.truncated
    text = tokenizer.decode(ids)
    assert cut and len(ids) <= 250
    assert SYSTEM in text and "the newest question" in text and "old turn 0 " not in text
    kept = [turn for turn in convo[1:] if turn["content"] in text]  # turns are dropped whole
    assert kept == convo[len(convo) - len(kept) :]  # oldest first
    assert len(kept) >= 3 and kept[0]["role"] == "user"  # older turns survive when they fit; a user turn first
    assert ids == render_prompt_ids(tokenizer, [convo[0], *kept], None)


def test_a_single_huge_turn_is_cut_from_the_front(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    words = " ".join(f"w{i}" for i in range(2000)) + " THE END"
    convo = with_system([{"role": "user", "content": words}], SYSTEM)
    fitted = fit_prompt(tokenizer, convo, 100)
    ids, cut = fitted.ids, fitted.truncated
    text = tokenizer.decode(ids)
    assert cut and 92 <= len(ids) <= 100  # nearly the whole budget is used
    assert SYSTEM in text and text.rstrip().endswith("assistant") and "THE END" in text and "w0 " not in text


def test_over_long_system_prompt_keeps_the_newest_tokens(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    convo = with_system([{"role": "user", "content": "hi"}], "rule " * 500)
    fitted = fit_prompt(tokenizer, convo, 20)
    ids, cut = fitted.ids, fitted.truncated
    full = render_prompt_ids(tokenizer, convo, None)
    assert cut and ids == full[-20:]


def test_streamed_pieces_never_split_a_character(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    text = "照护老人 needs patience 😀, 你好世界! ünïcödé"
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_streamed_pieces_join_up_to_the_full_decode_even_for_garbage(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # random ids include stray UTF-8 bytes that never form a character
        ids = torch.randint(0, len(tokenizer), (30,), generator=generator).tolist()
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.push(t) for t in ids]
        pieces.append(decoder.flush())
        assert "".join(pieces) == text_of(tokenizer, ids)


def test_sampling_runs_and_differs_from_greedy_sometimes(engine: TransformersEngine) -> None:
    torch.manual_seed(0)
    hot = GenerationParams(max_new_tokens=12, temperature=5.0)
    samples = {answer(engine, "alpha", hot) for _ in range(4)}
    assert len(samples) > 1


def test_a_seeded_sample_repeats_and_top_p_one_token_is_greedy(engine: TransformersEngine) -> None:
    hot = GenerationParams(max_new_tokens=12, temperature=5.0, seed=7)
    assert answer(engine, "alpha", hot) == answer(engine, "alpha", hot)
    assert len({answer(engine, "alpha", replace(hot, seed=s)) for s in range(4)}) > 1
    # top_p this small keeps only the most likely token: sampling then equals greedy.
    assert answer(engine, "alpha", replace(hot, top_p=1e-9)) == answer(engine, "alpha", GREEDY)


def test_stop_strings_end_the_answer_before_them_and_length_is_reported(engine: TransformersEngine) -> None:
    stats = StreamStats()
    full = "".join(engine.stream(QUESTION, "alpha", GREEDY, stats=stats))
    assert stats.finish_reason in ("length", "stop") and len(full) > 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    stopped_stats = StreamStats()
    cut = "".join(engine.stream(QUESTION, "alpha", replace(GREEDY, stop=("\x00never", stop)), stats=stopped_stats))
    assert cut == full[: full.index(stop)]
    assert stopped_stats.finish_reason == "stop"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_4bit_base_with_adapters(tiny: dict[str, Path]) -> None:
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    info = EngineInfo(base_model="tiny-qwen2", quantization="nf4", device="cpu")
    engine, warnings = make_engine(tiny, info=info, load={"quantization_config": quant})
    assert warnings == []
    assert any(type(m).__name__ == "Linear4bit" for m in engine._model.modules())
    base, alpha, beta = answer(engine, None), answer(engine, "alpha"), answer(engine, "beta")
    assert len({base, alpha, beta}) == 3

    plain, tokenizer = load(tiny["base"], quantization_config=quant)
    assert base == text_of(tokenizer, greedy_ids(plain, tokenizer))
