"""The bench run: each part in turn, side by side on one machine, into one result dict."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assistant.config import BUNDLED, Settings
from measurement.bench.generation_part import generation_part
from measurement.bench.machine import describe_machine, load_average
from measurement.bench.product_part import product_part
from measurement.bench.serve_bench import CLIENT_LEVELS
from measurement.bench.stats import ratio

SCHEMA = 1


@dataclass(frozen=True)
class BenchOptions:
    """How much to measure; `quick()` and `full()` are the two presets, flags may override single knobs."""

    quick: bool
    repeats: int
    new_tokens: int
    prompt_tokens: int
    router_queries: int
    batch_size: int
    adapters: int
    train_steps: int
    train_seq_len: int
    #: Concurrent clients the serve part measures (none: skipped).
    serve_clients: tuple[int, ...] = CLIENT_LEVELS
    #: Compare `serve` on a vLLM server with the local engine (starts vLLM: minutes, so only when asked).
    vllm: bool = False

    @classmethod
    def full(cls) -> BenchOptions:
        return cls(
            False,
            repeats=5,
            new_tokens=128,
            prompt_tokens=64,
            router_queries=200,
            batch_size=64,
            adapters=10,
            train_steps=3,
            train_seq_len=256,
        )

    @classmethod
    def quick_preset(cls) -> BenchOptions:
        return cls(
            True,
            repeats=2,
            new_tokens=64,
            prompt_tokens=64,
            router_queries=20,
            batch_size=32,
            adapters=2,
            train_steps=0,
            train_seq_len=256,
            serve_clients=(),
        )


def _fast_encoder(settings: Settings, current: Any, log: Callable[[str], None]) -> Any | None:
    """FastE5Encoder on the bundled encoder folder, to time next to the wired encoder (None when not applicable)."""
    if settings.encoder != BUNDLED or type(current).__name__ == "FastE5Encoder":
        return None
    try:
        from adapters.bundled_encoder import bundled_encoder_path
        from adapters.fast_encoder import FastE5Encoder

        path = bundled_encoder_path()
        return FastE5Encoder(path, name=f"fast:{path.name}")
    except Exception as exc:  # noqa: BLE001 - a side comparison must never fail the run
        log(f"[bench] FastE5Encoder comparison skipped: {type(exc).__name__}: {exc}")
        return None


def _router_part(settings: Settings, options: BenchOptions, log: Callable[[str], None]) -> dict[str, Any]:
    from adapters.wiring import build_router
    from measurement.bench.router_bench import bench_router

    router = build_router(settings)
    alternative = _fast_encoder(settings, router.encoder, log)
    result = bench_router(
        router, options.router_queries, options.batch_size, repeats=3 if options.quick else 5, alternative=alternative
    )
    log(
        f"[bench] router: p50 {result['single_ms_p50']:.1f} ms (encode {result['encode_ms_p50']:.1f} ms), "
        f"batched {result['batch_qps']:.0f} queries/s; p50 by threads {result['single_ms_p50_by_threads']}"
    )
    return result


def _memory_part(
    settings: Settings, options: BenchOptions, log: Callable[[str], None], notes: list[str]
) -> dict[str, Any]:
    """NF4 base with 0, 1 and N adapters, and one bf16 model: each in its own fresh process."""
    from measurement.bench.worker import run_part

    counts = sorted({0, options.adapters} | (set() if options.quick else {1}))
    rows = []
    for count in counts:
        log(f"[bench] memory: NF4 base + {count} adapter(s) (subprocess)...")
        row = run_part("measurement.bench.memory", settings, {"what": "adapters", "adapters": count}, log)
        if "skipped" in row:
            return {"skipped": row["skipped"]}
        rows.append(row)
    log("[bench] memory: one bf16 model (subprocess)...")
    bf16 = run_part("measurement.bench.memory", settings, {"what": "bf16"}, log)
    if "skipped" in bf16:
        return {"skipped": bf16["skipped"]}
    base, most = rows[0], rows[-1]
    per_adapter = (most["delta_mib"] - base["delta_mib"]) / most["adapters"] if most["adapters"] else 0.0
    if most["adapters"] == 10:
        ten, method_10 = most["delta_mib"], "measured: 10 adapters attached to one NF4 base"
    else:
        ten = base["delta_mib"] + 10 * per_adapter
        method_10 = f"extrapolated: base + 10 x the per-adapter cost measured with {most['adapters']}"
        notes.append(f"memory with 10 adapters extrapolated from {most['adapters']} measured")
    merged_10 = 10 * bf16["bf16_delta_mib"]
    return {
        "configurations": rows,
        "rss_after_imports_mib": base["rss_after_imports_mib"],
        "base_delta_mib": base["delta_mib"],
        "footprint_mib": base["footprint_mib"],
        "per_adapter_mib": per_adapter,
        "adapter_file_mib": most["adapter_files_mib"] / max(1, most["adapters"]),
        "adapter_sources": most["adapter_sources"],
        "ten_adapters_mib": ten,
        "ten_adapters_method": method_10,
        "switch_ms_p50": most["switch_ms_p50"],
        "switch_ms_p95": most["switch_ms_p95"],
        "switches": most["switches"],
        "lora_modules": most["lora_modules"],
        "bf16_model_mib": bf16["bf16_delta_mib"],
        "bf16_footprint_mib": bf16["bf16_footprint_mib"],
        "ten_merged_mib": merged_10,
        "ten_merged_method": "estimate: 10 x the measured RSS of one bf16 base after its first forward, in a clean "
        "process (merge_and_unload gives a model of exactly that size and dtype)",
        "ten_merged_nf4_mib": 10 * base["delta_mib"],
        "ten_merged_vs_ten_adapters": ratio(merged_10, ten),
        "ten_merged_nf4_vs_ten_adapters": ratio(10 * base["delta_mib"], ten),
    }


def _training_part(settings: Settings, options: BenchOptions, log: Callable[[str], None]) -> dict[str, Any]:
    from measurement.bench.worker import run_part

    log(f"[bench] training: QLoRA {options.train_steps} steps at {options.train_seq_len} tokens (subprocess)...")
    return run_part(
        "measurement.bench.training_cost",
        settings,
        {"steps": options.train_steps, "seq_len": options.train_seq_len, "batch": 2, "warmup": 1},
        log,
    )


def run_bench(settings: Settings, options: BenchOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Every part in order; the machine's load is recorded around each, since the box is shared."""
    started = time.perf_counter()
    notes: list[str] = []
    machine = describe_machine()
    load: dict[str, float] = {"start": load_average()}
    machine["threads_setting"] = settings.threads
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": machine["date"],
        "quick": options.quick,
        "options": asdict(options),
        "machine": machine,
        "notes": notes,
    }
    result["router"] = _router_part(settings, options, log)
    load["after_router"] = load_average()
    root = Path(tempfile.mkdtemp(prefix="yijia-bench-"))
    try:
        result["generation"] = generation_part(
            settings, options.quick, options.repeats, options.new_tokens, options.prompt_tokens, log, root, notes
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load["after_generation"] = load_average()
    result["product"] = product_part(settings, options.quick, log, notes)
    load["after_product"] = load_average()
    result["adapters"] = _memory_part(settings, options, log, notes)
    gen = result["generation"]["variants"]
    answer_ms = gen["nf4_lora"]["total_s"] * 1000
    route_ms = result["router"]["single_ms_p50"]
    result["adapters"]["route_share_of_answer"] = route_ms / (route_ms + answer_ms) if answer_ms else None
    result["adapters"]["route_share_basis"] = (
        f"router p50 vs one {options.new_tokens}-token answer through an adapter (median total time)"
    )
    load["after_memory"] = load_average()
    if options.train_steps > 0:
        result["training"] = _training_part(settings, options, log)
        load["after_training"] = load_average()
    else:
        result["training"] = {"skipped": "quick mode (run without --quick for the training cost)"}
        notes.append("training cost skipped (quick mode)")
    if options.serve_clients:
        from measurement.bench.serve_bench import serve_part

        result["serve"] = serve_part(settings, log, options.serve_clients)
        load["after_serve"] = load_average()
    else:
        result["serve"] = {"skipped": "quick mode (run without --quick for the serve latencies)"}
    if options.vllm:
        from measurement.bench.vllm_part import vllm_part

        result["vllm"] = vllm_part(settings, log)
        load["after_vllm"] = load_average()
    load["end"] = load_average()
    cores = machine["cores_logical"]
    machine["load_average"] = load
    # Load above half the cores before we started means other jobs shared the CPU with the run.
    machine["busy"] = load["start"] > cores / 2
    if machine["busy"]:
        notes.append(
            f"machine busy: load average {load['start']:.1f} at the start on {cores} cores; "
            "absolute times are pessimistic, ratios (interleaved rounds) are the robust figures"
        )
    if options.quick:
        notes.insert(
            0,
            f"quick mode: {options.repeats} rounds, {options.new_tokens} new tokens, "
            f"{options.adapters} adapters, no training; not for the README",
        )
    result["seconds"] = time.perf_counter() - started
    return result
