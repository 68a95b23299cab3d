"""Generation timings through the product's engine: time to first token and decode tokens/s, interleaved rounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.config import Settings
from assistant.engine import GenerationParams, StreamStats
from measurement.bench.prompt import BenchPrompt
from measurement.bench.stats import median, spread


@dataclass(frozen=True)
class Timing:
    """One generation: seconds to the first token, seconds in all, tokens made, decode speed after the first."""

    ttft_s: float
    total_s: float
    new_tokens: int
    decode_tok_s: float
    text: str = ""  # the answer, so prototypes can be checked against the product path


def decode_rate(new_tokens: int, limit: int, ttft_s: float, total_s: float) -> float:
    """Tokens/s of the forwards after the first token.

    A run that hit the limit made `limit` forwards (the first gave token 1); one that met
    end-of-turn made one more forward than it kept tokens (the last produced the stop token).
    """
    forwards_after_first = limit - 1 if new_tokens >= limit else new_tokens
    seconds = total_s - ttft_s
    return forwards_after_first / seconds if forwards_after_first > 0 and seconds > 0 else 0.0


def engine_run(engine: Any, prompt: BenchPrompt, adapter: str | None) -> Callable[[int], Timing]:
    """A timing function for one engine route: greedy, through Engine.stream as the product answers."""

    def run(new_tokens: int) -> Timing:
        stats = StreamStats()
        params = GenerationParams(max_new_tokens=new_tokens, temperature=0.0)
        text = "".join(engine.stream(list(prompt.messages), adapter, params, stats=stats))
        if stats.prompt_tokens != prompt.tokens:
            raise RuntimeError(
                f"engine rendered {stats.prompt_tokens} prompt tokens, the bench expected {prompt.tokens}"
            )
        rate = decode_rate(stats.new_tokens, new_tokens, stats.first_token_s, stats.total_s)
        return Timing(stats.first_token_s, stats.total_s, stats.new_tokens, rate, text)

    return run


@dataclass
class Variant:
    """One thing being timed (an engine route or the peer) and its runs."""

    key: str
    label: str
    run: Callable[[int], Timing]
    meta: dict[str, Any] = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Medians (what the report quotes) plus every run, so the noise is visible."""
        decode = [t.decode_tok_s for t in self.timings]
        ttft = [t.ttft_s for t in self.timings]
        return {
            "label": self.label,
            **self.meta,
            "runs": len(self.timings),
            "ttft_s": median(ttft),
            "decode_tok_s": median(decode),
            "total_s": median([t.total_s for t in self.timings]),
            "new_tokens": median([float(t.new_tokens) for t in self.timings]),
            "decode_spread": spread(decode),
            "decode_tok_s_runs": [round(x, 3) for x in decode],
            "ttft_s_runs": [round(x, 4) for x in ttft],
        }


def measure_interleaved(
    variants: list[Variant], repeats: int, new_tokens: int, log: Callable[[str], None], pause_s: float = 0.2
) -> None:
    """Warm each variant once, then run every variant once per round, `repeats` rounds.

    Interleaving spreads the load of a shared machine evenly over the variants, so their
    ratios stay meaningful even when absolute times drift.
    """
    for v in variants:
        v.run(min(8, new_tokens))  # first-call costs (allocations, kernel selection) are not decode speed
    for round_no in range(1, repeats + 1):
        for v in variants:
            time.sleep(pause_s)  # let the previous library's worker threads go idle
            timing = v.run(new_tokens)
            v.timings.append(timing)
            log(
                f"[bench] round {round_no}/{repeats} {v.label}: first token {timing.ttft_s:.3f} s, "
                f"{timing.decode_tok_s:.1f} tok/s ({timing.new_tokens} tokens)"
            )


def paired_ratios(a: Variant, b: Variant) -> list[float]:
    """Per-round a/b decode ratios (same round = same machine conditions)."""
    return [x.decode_tok_s / y.decode_tok_s for x, y in zip(a.timings, b.timings, strict=False) if y.decode_tok_s]


def load_engine(
    settings: Settings,
    quantization: str,
    adapters_dir: Path,
    log: Callable[[str], None],
    prepare: Callable[[Any], dict[str, Any]] | None = None,
) -> tuple[Any, Any, float, dict[str, Any]]:
    """(LoadedBase, engine, load seconds, tuning facts) for one bench variant, built by the product's wiring.

    `adapters_dir` is the only adapter store the variant sees; `prepare` may rewrite the model
    before the engine warms it up (the speed prototypes).
    """
    from adapters.wiring import build_engine_parts

    variant = settings.with_overrides(quantization=quantization, adapter_dirs=(adapters_dir,))
    built = build_engine_parts(variant, log, prepare=prepare, show_progress=False)
    return built.loaded, built.engine, built.load_seconds, built.tuning


def thread_sweep(
    runs: dict[str, tuple[Callable[[int], Timing], Callable[[int], None]]],
    counts: list[int],
    rounds: int,
    new_tokens: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, float]]:
    """Median decode tok/s per engine per thread count, interleaved; every setter is restored to counts[-1].

    `runs` maps a name to (timing function, thread setter). On a shared machine a second thread
    can cost more than it gives (workers waiting on each other while other jobs hold the cores),
    which is what this shows, for torch and llama.cpp alike.
    """
    rates: dict[str, dict[int, list[float]]] = {name: {c: [] for c in counts} for name in runs}
    try:
        for _ in range(rounds):
            for count in counts:
                for name, (run, set_threads) in runs.items():
                    set_threads(count)
                    rates[name][count].append(run(new_tokens).decode_tok_s)
    finally:
        for _, set_threads in runs.values():
            set_threads(counts[-1])
    result = {name: {str(c): median(v) for c, v in by_count.items()} for name, by_count in rates.items()}
    for name, by_count in result.items():
        log(f"[bench] {name} decode by thread count: {', '.join(f'{c}: {r:.1f} tok/s' for c, r in by_count.items())}")
    return result


def common_prefix_share(a: str, b: str) -> float:
    """How much of the longer answer the two share from the start (1.0 = identical)."""
    longest = max(len(a), len(b))
    if not longest:
        return 1.0
    same = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        same += 1
    return same / longest
