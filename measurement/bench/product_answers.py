"""Whole answers as a user gets them (router, rules, knowledge, engine), next to llama.cpp on the very same prompts.

Each question goes through ChatSession.ask, as `ask --json` answers it; the prompt ids the engine
rendered (system prompt, knowledge passages, in-character start included) then go to llama.cpp on
the same GGUF, which generates as many tokens greedily. Both may reuse what they kept from the
previous prompt (our prefix cache, llama.cpp's own KV cache), as a server would. Speed is tokens
over the whole answer's wall time (routing and prefill included), in interleaved rounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from adapters.prompt_fit import fit_to_context
from assistant.engine import GenerationParams, Message, StreamStats
from assistant.session import Done
from measurement.bench.stats import median

#: Questions the router sends to each route and the safety rules leave to the model.
QUESTIONS = (
    "Why do we have leap years?",
    "小孩在学校被欺负了，家长该怎么处理",
    "推荐一部适合全家看的电影",
    "老人坐久了屁股疼，坐垫用什么材质的好",
    "卧床老人怎么翻身防压疮？",
    "阿尔茨海默病老人反复问同一个问题怎么照护？",
)


@dataclass
class Call:
    """What the session asked the engine for, and the engine's stats of that answer."""

    messages: list[Message]
    adapter: str | None
    params: GenerationParams
    stats: StreamStats
    started: float  # perf_counter when the session called the engine (its stats count from there)


@dataclass
class RecordingEngine:
    """The engine, passed through, remembering each call (the prompt llama.cpp must get, and the timings)."""

    engine: Any
    calls: list[Call] = field(default_factory=list)

    def info(self) -> Any:
        return self.engine.info()

    def adapters(self) -> Any:
        return self.engine.adapters()

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Iterator[str]:
        stats = stats if stats is not None else StreamStats()
        self.calls.append(Call(list(messages), adapter, params, stats, time.perf_counter()))
        return self.engine.stream(messages, adapter, params, cancel, stats)  # type: ignore[no-any-return]


def prompt_ids(engine: Any, call: Call) -> list[int]:
    """The ids the engine decoded from for `call` (fitted the same way), for llama.cpp."""
    fitted = fit_to_context(
        engine._tokenizer,
        call.messages,
        None,
        engine.context,
        call.params.max_new_tokens,
        call.params.answer_prefix,
    )
    return fitted.ids


def _ask(session: Any, recorder: RecordingEngine, question: str) -> tuple[Call, float, int, str]:
    """One answer through the session: its engine call, wall seconds, tokens, text."""
    started = time.perf_counter()
    tokens, text = 0, ""
    for event in session.ask(question):
        if isinstance(event, Done):
            tokens, text = event.new_tokens, event.answer
    return recorder.calls[-1], time.perf_counter() - started, tokens, text


def measure_answers(
    session: Any,
    recorder: RecordingEngine,
    peer: Any | None,
    rounds: int,
    log: Callable[[str], None],
    variants: dict[str, Callable[[], AbstractContextManager[Any]]] | None = None,
) -> dict[str, Any]:
    """Whole-answer tok/s per route of ours (each variant: a context to answer in) and of llama.cpp, interleaved.

    The first variant is the product; the others report how many answers came out the same as its.
    """
    variants = variants or {"ours": nullcontext}
    engine = recorder.engine
    speeds: dict[str, dict[str, list[float]]] = {}
    texts: dict[str, dict[str, str]] = {}
    prompt_tokens: dict[str, list[float]] = {}
    prompts: dict[str, list[int]] = {}
    for round_no in range(1, rounds + 1):
        for question in QUESTIONS:
            for name, scope in variants.items():
                with scope():
                    call, seconds, tokens, text = _ask(session, recorder, question)
                route = "general" if call.adapter is None else "adapter"
                speeds.setdefault(name, {}).setdefault(route, []).append(tokens / seconds if seconds else 0.0)
                texts.setdefault(name, {})[question] = text
            ids = prompt_ids(engine, call)
            prompts[question] = ids
            prompt_tokens.setdefault(route, []).append(float(len(ids)))
            if peer is not None:
                peer_s, made = peer.answer(ids, max(1, tokens))
                speeds.setdefault("llama_cpp", {}).setdefault(route, []).append(made / peer_s if peer_s else 0.0)
            log(
                f"[bench] answers round {round_no}/{rounds} {route}: {len(ids)} prompt tokens, "
                + ", ".join(f"{n} {v[route][-1]:.1f} tok/s" for n, v in speeds.items())
            )
    tok_s = {name: {route: median(v) for route, v in by_route.items()} for name, by_route in speeds.items()}
    first = next(iter(variants))
    result: dict[str, Any] = {
        "questions": list(QUESTIONS),
        "rounds": rounds,
        "prompt_tokens_median": {route: median(v) for route, v in prompt_tokens.items()},
        "tok_s": tok_s,
        "same_answers_as_product": {
            name: sum(texts[name][q] == texts[first][q] for q in QUESTIONS) / len(QUESTIONS) for name in variants
        },
    }
    peer_speed = tok_s.get("llama_cpp")
    if peer_speed:
        result["vs_llama_cpp"] = {
            name: {route: (v / peer_speed[route] if peer_speed.get(route) else None) for route, v in by_route.items()}
            for name, by_route in tok_s.items()
            if name != "llama_cpp"
        }
    if peer is not None:
        result["llama_cpp_replay"] = peer_replay(peer, [prompts[q] for q in QUESTIONS], 96)
    return result


def peer_replay(peer: Any, prompts: Sequence[list[int]], new_tokens: int) -> dict[str, Any]:
    """llama.cpp's answers with the shared prefix kept vs the whole prompt prefilled: how many are the same.

    Our conversation replay asks this of our engine; llama.cpp's figure shows how often slicing the
    same arithmetic differently flips a greedy near tie in another mature engine.
    """
    same = 0
    for ids in prompts:
        peer.greedy_ids(ids[: max(1, len(ids) // 2)], 1, keep_prefix=False)  # leaves half the prompt kept
        kept = peer.greedy_ids(ids, new_tokens, keep_prefix=True)
        whole = peer.greedy_ids(ids, new_tokens, keep_prefix=False)
        same += kept == whole
    return {"prompts": len(prompts), "new_tokens": new_tokens, "same": same}
