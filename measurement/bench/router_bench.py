"""Router speed: single-query latency (encode + classify, and each alone) and batched throughput."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.labels import HELDOUT_DIR, labelled_files, load_labelled_file
from measurement.bench.stats import median, p95

TARGET_MS = 10.0


class _Precomputed:
    """An encoder that returns vectors computed beforehand: times the router minus the encoder."""

    def __init__(self, name: str, table: dict[str, np.ndarray]) -> None:
        self.name = name
        self._table = table

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._table[t] for t in texts])


def bench_queries(router: Any, count: int, heldout: Path = HELDOUT_DIR) -> list[str]:
    """`count` distinct realistic queries, spread evenly over the held-out files (never trained on).

    Spread, not the first lines: encode time grows with length, and a file's first lines can be
    one kind (the real-user set opens with long family stories: median 54 characters against 27
    over the whole set, which timed 14 ms p50 against 8 ms). Training examples fill in when the
    held-out set is short.
    """
    texts: list[str] = []
    if heldout.is_dir():
        for file in labelled_files([heldout]):
            texts += [e.text for e in load_labelled_file(file)]
    texts = list(dict.fromkeys(texts))
    if len(texts) > count:
        texts = [texts[i * len(texts) // count] for i in range(count)]
    unique = list(dict.fromkeys(texts + list(getattr(router.stored, "example_texts", []))))
    if not unique:
        raise ValueError("no queries to time the router on")
    while len(unique) < count:
        unique += unique
    return unique[:count]


def _ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _p50_by_threads(router: Any, texts: Sequence[str]) -> dict[str, float]:
    """Single-query p50 with 1 torch thread and with every core: one short query gains little from a second
    thread, and on a shared machine busy-waiting workers can make it many times slower."""
    before = torch.get_num_threads()
    out: dict[str, float] = {}
    try:
        for count in sorted({1, before, os.cpu_count() or 1}):
            torch.set_num_threads(count)
            router.route(texts[0])
            out[str(count)] = median([router.timed_route(t)[1] for t in texts])
    finally:
        torch.set_num_threads(before)
    return out


@contextmanager
def _one_blas_thread() -> Iterator[bool]:
    """numpy's BLAS on one thread (yields whether it could be limited).

    The router's products are 1 x 384 by 384 x ~2,300: a second OpenBLAS thread only adds a
    hand-off, which on a shared machine measured ~12 ms per query instead of ~1 ms.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield True


def _prototype(router: Any, texts: Sequence[str], alternative: Any) -> dict[str, Any]:
    """The same router with the speed fixes applied: a faster encoder and the example matrix kept in float32.

    Router.route_many converts its float16 example matrix to float32 on every call (numpy's
    half-to-single conversion costs ~7 ms for ~2,300 examples); converting once removes that.
    """
    from assistant.router import Router

    stored32 = dataclasses.replace(router.stored, example_vectors=router.stored.example_vectors.astype(np.float32))
    encoder = alternative or router.encoder
    fast = Router(encoder, stored32, router.routes, router.nearest_k)
    changes = ["float32 example matrix cached"]
    with _one_blas_thread() as limited:
        if limited:
            changes.append("numpy BLAS on 1 thread")
        if alternative is not None:
            changes.append(f"encoder {encoder.name}")
        for text in texts[:3]:
            fast.route(text)
        single = [fast.timed_route(t)[1] for t in texts]
        encode = [_ms(partial(encoder.encode, [t])) for t in texts]
        routes = [fast.route(t).route for t in texts]
        table = {t: router.encoder.encode([t])[0] for t in texts}
        bare = Router(_Precomputed(encoder.name, table), stored32, router.routes, router.nearest_k)
        classify = [_ms(partial(bare.route, t)) for t in texts]
    same = sum(r == router.route(t).route for r, t in zip(routes, texts, strict=True))
    return {
        "encoder": encoder.name,
        "changes": "; ".join(changes),
        "single_ms_p50": median(single),
        "single_ms_p95": p95(single),
        "encode_ms_p50": median(encode),
        "classify_ms_p50": median(classify),
        "same_route_share": same / len(texts),
    }


def bench_router(
    router: Any, queries: int, batch_size: int, repeats: int, alternative: Any | None = None
) -> dict[str, Any]:
    """Latencies in ms (p50/p95 over `queries` distinct texts) and queries/s routing `batch_size` at once."""
    from assistant.router import Router

    texts = bench_queries(router, max(queries, batch_size))
    for text in texts[:3]:
        router.route(text)  # first calls build thread pools and caches
    single = [router.timed_route(t)[1] for t in texts[:queries]]
    encode = [_ms(partial(router.encoder.encode, [t])) for t in texts[:queries]]
    table = {t: router.encoder.encode([t])[0] for t in texts[:queries]}
    bare = Router(_Precomputed(router.encoder.name, table), router.stored, router.routes, router.nearest_k)
    classify = [_ms(partial(bare.route, t)) for t in texts[:queries]]
    batch = texts[:batch_size]
    batch_s = [_ms(lambda: router.route_many(batch)) / 1000 for _ in range(repeats)]
    encode_batch_s = [_ms(lambda: router.encoder.encode(batch)) / 1000 for _ in range(repeats)]
    p50 = median(single)
    by_threads = _p50_by_threads(router, texts[: min(queries, 20)])
    stored32 = dataclasses.replace(router.stored, example_vectors=router.stored.example_vectors.astype(np.float32))
    bare32 = Router(_Precomputed(router.encoder.name, table), stored32, router.routes, router.nearest_k)
    classify32 = [_ms(partial(bare32.route, t)) for t in texts[:queries]]
    return {
        "encoder": router.encoder.name,
        "queries": len(single),
        "single_ms_p50": p50,
        "single_ms_p95": p95(single),
        "encode_ms_p50": median(encode),
        "classify_ms_p50": median(classify),
        "batch_size": len(batch),
        "batch_qps": len(batch) / median(batch_s),
        "batch_ms_per_query": median(batch_s) * 1000 / len(batch),
        "encode_batch_qps": len(batch) / median(encode_batch_s),
        "classify_ms_p50_fp32_examples": median(classify32),
        "prototype": _prototype(router, texts[:queries], alternative),
        "single_ms_p50_by_threads": by_threads,
        "threads": torch.get_num_threads(),
        "target_ms": TARGET_MS,
        "meets_target": p50 <= TARGET_MS,
    }
