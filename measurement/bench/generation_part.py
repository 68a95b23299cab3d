"""The generation part of the bench: load every variant, time them in interleaved rounds, profile, prototypes."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import BUNDLED, Settings
from measurement.bench.generation import (
    Variant,
    common_prefix_share,
    engine_run,
    load_engine,
    measure_interleaved,
    paired_ratios,
    thread_sweep,
)
from measurement.bench.stats import median, ratio

DECODE_GOAL = 0.7  # our decode speed as a share of llama.cpp's on the same file and threads


def peer_gguf(settings: Settings) -> tuple[Path | None, str]:
    """The GGUF llama.cpp runs: the very file the product ships, or the user's own .gguf base."""
    if settings.base == BUNDLED:
        from adapters.bundled_gguf import bundled_gguf_path

        return bundled_gguf_path(progress=False), "the bundled GGUF the product ships"
    path = Path(settings.base).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path, "the --base GGUF file"
    return None, "the base is not a GGUF file, so llama.cpp has no same-file peer (use --base bundled or a .gguf)"


def lora_dir(settings: Settings, loaded: Any, root: Path) -> tuple[Path, str]:
    """A folder holding one adapter for the LoRA runs: an installed one for this base, else a random one."""
    from adapters.registry import read_manifest, scan_adapters
    from measurement.bench.random_lora import write_random_lora

    folder = root / "lora"
    folder.mkdir()
    found, _ = scan_adapters(settings.adapter_dirs)
    for adapter in found:
        if read_manifest(Path(adapter.path)).get("base_checksum") == loaded.checksum:
            os.symlink(adapter.path, folder / adapter.name)
            return folder, "installed"
    write_random_lora(
        loaded.model, folder / "bench-random", "bench-random", "bench-random", loaded.model_id, loaded.checksum
    )
    return folder, "random (no installed adapter for this base)"


def _peer_variant(settings: Settings, ids: list[int], threads: int) -> Variant | dict[str, str]:
    from measurement.bench.peer import INSTALL_HINT, LlamaCppPeer, llama_cpp_version

    gguf, why = peer_gguf(settings)
    version = llama_cpp_version()
    if gguf is None:
        return {"skipped": why}
    if version is None:
        return {"skipped": f"llama-cpp-python is not installed: {INSTALL_HINT}"}
    peer = LlamaCppPeer(gguf, threads)
    peer.ids = ids
    meta = {"gguf": str(gguf), "gguf_source": why, "llama_cpp_python": version, "load_s": peer.load_s}
    variant = Variant("llama_cpp", "llama.cpp (same GGUF)", peer.run, meta)
    variant.meta["set_threads"] = peer.set_threads  # dropped from the summary below (not JSON)
    return variant


def _prototypes(settings: Settings, empty: Path, prompt: Any, log: Callable[[str], None]) -> list[Variant]:
    """Speed ideas measured next to the product path (not the product: see each module's docstring).

    (The int8 output layer, once a prototype here, is the product's own since: `ours NF4` has it.)
    """
    from measurement.bench.int4_torch import convert_to_int4

    log("[bench] loading prototype: torch int4 kernels instead of bitsandbytes...")
    _, int4_engine, _, int4_facts = load_engine(settings, "bf16", empty, log, prepare=convert_to_int4)
    gc.collect()
    return [Variant("int4_torch", "prototype: torch int4 kernels", engine_run(int4_engine, prompt, None), int4_facts)]


def _ttft_by_length(
    engine: Any,
    model: Any,
    tokenizer: Any,
    rounds: int,
    log: Callable[[str], None],
    lengths: tuple[int, ...] = (64, 256, 1024),
) -> dict[str, float]:
    """NF4 time to first token by prompt length: what a prompt costs when nothing kept covers it
    (a first question, or a conversation whose kept keys/values were evicted)."""
    from measurement.bench.prompt import exact_prompt

    context = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 2048)
    lengths = tuple(n for n in lengths if n <= context - 16)  # the engine would cut longer prompts
    runs = {n: engine_run(engine, exact_prompt(tokenizer, n), None) for n in lengths}
    times: dict[int, list[float]] = {n: [] for n in lengths}
    for _ in range(rounds):
        for n, run in runs.items():
            times[n].append(run(2).ttft_s)
    result = {str(n): median(v) for n, v in times.items()}
    log(f"[bench] NF4 time to first token by prompt tokens: {result}")
    return result


def _ratios(summary: dict[str, Any], by_key: dict[str, Variant]) -> dict[str, Any]:
    decode = {k: s.get("decode_tok_s") for k, s in summary.items()}
    ratios: dict[str, Any] = {
        "nf4_vs_llama_cpp_decode": ratio(decode.get("nf4"), decode.get("llama_cpp")),
        "nf4_lora_vs_llama_cpp_decode": ratio(decode.get("nf4_lora"), decode.get("llama_cpp")),
        "nf4_vs_bf16_decode": ratio(decode.get("nf4"), decode.get("bf16")),
        "nf4_lora_vs_nf4_decode": ratio(decode.get("nf4_lora"), decode.get("nf4")),
        "nf4_vs_bf16_ttft": ratio(summary["nf4"]["ttft_s"], summary["bf16"]["ttft_s"]),
    }
    if "llama_cpp" in by_key:
        ratios["nf4_vs_llama_cpp_decode_paired_median"] = median(paired_ratios(by_key["nf4"], by_key["llama_cpp"]))
        ratios["llama_cpp_vs_nf4_ttft"] = ratio(summary["llama_cpp"]["ttft_s"], summary["nf4"]["ttft_s"])
    for key in ("nf4_base_route", "int4_torch"):
        if key in summary:
            ratios[f"{key}_vs_nf4_decode"] = ratio(decode.get(key), decode.get("nf4"))
            ratios[f"{key}_vs_llama_cpp_decode"] = ratio(decode.get(key), decode.get("llama_cpp"))
    return ratios


def generation_part(
    settings: Settings,
    quick: bool,
    repeats: int,
    new_tokens: int,
    prompt_tokens: int,
    log: Callable[[str], None],
    root: Path,
    notes: list[str],
) -> dict[str, Any]:
    """Every variant in interleaved rounds; the full run adds the base route, prototypes, a thread sweep."""
    import torch

    from measurement.bench.profile_decode import profile_decode
    from measurement.bench.prompt import exact_prompt

    empty = root / "no-adapters"
    empty.mkdir()
    log("[bench] loading the NF4 base...")
    nf4, nf4_engine, nf4_load_s, _ = load_engine(settings, "4bit", empty, log)
    prompt = exact_prompt(nf4.tokenizer, prompt_tokens)
    threads = torch.get_num_threads()
    adapters_dir, lora_source = lora_dir(settings, nf4, root)
    log("[bench] loading the NF4 base with an adapter...")
    _, lora_engine, _, _ = load_engine(settings, "4bit", adapters_dir, log)
    adapter = lora_engine.adapters()[0].name
    log("[bench] loading the bf16 base...")
    bf16, bf16_engine, bf16_load_s, _ = load_engine(settings, "bf16", empty, log)
    nf4_run = engine_run(nf4_engine, prompt, None)
    variants = [
        Variant("nf4", "ours NF4", nf4_run, {"kernel": nf4.info.kernel}),
        Variant(
            "nf4_lora",
            "ours NF4 + LoRA",
            engine_run(lora_engine, prompt, adapter),
            {"adapter": adapter, "adapter_source": lora_source},
        ),
        Variant("bf16", "ours bf16", engine_run(bf16_engine, prompt, None), {"kernel": bf16.info.kernel}),
    ]
    if not quick:
        variants.insert(
            2,
            Variant(
                "nf4_base_route",
                "ours NF4, adapter attached, base route",
                engine_run(lora_engine, prompt, None),
                {"adapter_attached": adapter},
            ),
        )
        variants += _prototypes(settings, empty, prompt, log)
    peer = _peer_variant(settings, list(prompt.ids), threads)
    if isinstance(peer, Variant):
        variants.append(peer)
    else:
        notes.append(f"llama.cpp peer skipped: {peer['skipped']}")
    log(
        f"[bench] generation: {len(variants)} variants x {repeats} rounds, prompt {prompt.tokens} tokens, "
        f"{new_tokens} new tokens, {threads} threads"
    )
    measure_interleaved(variants, repeats, new_tokens, log)
    by_key = {v.key: v for v in variants}
    summary: dict[str, Any] = {v.key: v.summary() for v in variants}
    summary.get("llama_cpp", {}).pop("set_threads", None)
    if not isinstance(peer, Variant):
        summary["llama_cpp"] = peer
    reference = by_key["nf4"].timings[-1].text
    for key in ("int4_torch",):
        if key in by_key:  # how much of the product's greedy answer a prototype reproduces
            summary[key]["same_answer_share"] = common_prefix_share(reference, by_key[key].timings[-1].text)
    ratios = _ratios(summary, by_key)
    measured = ratios["nf4_vs_llama_cpp_decode"]
    profile = None
    if measured is None or measured < DECODE_GOAL or not quick:
        log("[bench] profiling decode steps of the NF4 base...")
        profile = profile_decode(nf4.model, prompt.ids, steps=4 if quick else 8)
    sweep = None
    if not quick:
        counts = sorted({1, threads, os.cpu_count() or 1})
        runs: dict[str, Any] = {"nf4": (nf4_run, torch.set_num_threads)}
        if "llama_cpp" in by_key:
            runs["llama_cpp"] = (by_key["llama_cpp"].run, by_key["llama_cpp"].meta["set_threads"])
        sweep = thread_sweep(runs, counts, rounds=max(2, repeats // 2), new_tokens=min(new_tokens, 64), log=log)
        torch.set_num_threads(threads)
        if "llama_cpp" in by_key:
            by_key["llama_cpp"].meta["set_threads"](threads)
    ttft_by_length = None
    if not quick:
        ttft_by_length = _ttft_by_length(nf4_engine, nf4.model, nf4.tokenizer, rounds=2, log=log)
    result = {
        "prompt_tokens": prompt.tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "greedy": True,
        "interleaved": True,
        "load_s": {"nf4": nf4_load_s, "bf16": bf16_load_s},
        "variants": summary,
        "ratios": ratios,
        "decode_goal_vs_llama_cpp": DECODE_GOAL,
        "profile": profile,
        "thread_sweep_decode_tok_s": sweep,
        "nf4_ttft_s_by_prompt_tokens": ttft_by_length,
    }
    del variants, by_key, nf4, nf4_engine, lora_engine, bf16, bf16_engine, nf4_run
    gc.collect()
    return result
