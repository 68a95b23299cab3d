"""Where one decode step's time goes: torch.profiler top ops, grouped into kinds, and cProfile's Python hot spots."""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Sequence
from typing import Any

import torch


def _kind(name: str, shapes: Sequence[Any], vocab: int) -> str:
    lowered = name.lower()
    if "bitsandbytes" in lowered or "4bit" in lowered:
        return "4-bit matmul (bitsandbytes)"
    flat = [d for s in shapes if isinstance(s, (list, tuple)) for d in s if isinstance(d, int)]
    if vocab in flat and any(k in lowered for k in ("mm", "linear", "matmul")):
        return "output layer (lm_head)"
    if any(k in lowered for k in ("attention", "softmax", "bmm")):
        return "attention"
    if any(k in lowered for k in ("mm", "linear", "matmul")):
        return "dense matmul"
    if any(k in lowered for k in ("copy", "cat", "to", "contiguous", "clone", "empty", "index")):
        return "copies / allocation"
    return "elementwise / other ops"


def _steps(model: Any, token: torch.Tensor, past: Any, steps: int) -> tuple[torch.Tensor, Any]:
    for _ in range(steps):
        out = model(input_ids=token, past_key_values=past, use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
    return token, past


def profile_decode(model: Any, prompt_ids: Sequence[int], steps: int = 8, top: int = 12) -> dict[str, Any]:
    """Profile `steps` KV-cached decode steps after prefilling `prompt_ids` (the engine's own loop, minus sampling)."""
    from torch.profiler import ProfilerActivity, profile

    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(prompt_ids)]), use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        token, past = _steps(model, token, past, 2)  # warm: first decode steps allocate
        started = time.perf_counter()
        token, past = _steps(model, token, past, steps)
        step_ms = (time.perf_counter() - started) * 1000 / steps  # unprofiled: the real step time
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            token, past = _steps(model, token, past, steps)
        profiler = cProfile.Profile()
        profiler.enable()
        token, past = _steps(model, token, past, steps)
        profiler.disable()

    events = list(prof.key_averages(group_by_input_shape=True))
    total_self_us = sum(e.self_cpu_time_total for e in events) or 1.0
    kinds: dict[str, float] = {}
    for e in events:
        kind = _kind(e.key, e.input_shapes or [], vocab)
        kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total
    ops_ms = total_self_us / 1000 / steps
    top_ops = [
        {
            "op": e.key,
            "shapes": str(e.input_shapes)[:80],
            "kind": _kind(e.key, e.input_shapes or [], vocab),
            "calls_per_step": e.count / steps,
            "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
            "share_of_op_time": e.self_cpu_time_total / total_self_us,
        }
        for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    ]
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]  # type: ignore[attr-defined]
    python_hot = [
        {
            "function": f"{file.rsplit('/', 1)[-1]}:{line}({func})",
            "calls_per_step": calls / steps,
            "own_ms_per_step": tottime * 1000 / steps,
        }
        for (file, line, func), (_cc, calls, tottime, _ct, _callers) in rows
    ]
    return {
        "steps": steps,
        "threads": torch.get_num_threads(),
        "step_ms": step_ms,
        "op_ms_per_step": ops_ms,
        # Wall time that no torch op accounts for: Python, module dispatch, peft/transformers glue.
        "outside_ops_ms_per_step": max(0.0, step_ms - ops_ms),
        "kinds_ms_per_step": {k: v / 1000 / steps for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": top_ops,
        "python_hot_spots": python_hot,
    }
