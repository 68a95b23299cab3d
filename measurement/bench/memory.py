"""Resident memory (RSS) of the NF4 base with k adapters, and of one bf16 model, each in a clean process.

Run as a subprocess part (`python -m measurement.bench.memory`). Each configuration is built the way
the engine builds it (load, attach every adapter, then the first forward) and measured in its
serving state: attaching adapters *after* the first forward costs far more (bitsandbytes' CPU
repack is redone for the wrapped layers: +~280 MiB on the 0.5B base, measured), so the order matters.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import Settings
from measurement.bench.machine import rss_mib
from measurement.bench.stats import median, p95
from measurement.bench.worker import worker_main


def _baseline_rss() -> float:
    """RSS once every library a load touches is imported, so deltas count model memory, not code pages."""
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from adapters import base_model  # noqa: F401

    gc.collect()
    return rss_mib()


def _rss_split() -> dict[str, float]:
    """Anonymous vs file-backed resident memory (mmapped weights count as file-backed until copied)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                key = line.split(":")[0]
                if key in ("RssAnon", "RssFile"):
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _installed(settings: Settings, checksum: str) -> list[tuple[str, Path]]:
    """Installed adapters trained on this very base (others would not attach)."""
    from adapters.registry import read_manifest, scan_adapters

    found, _ = scan_adapters(settings.adapter_dirs)
    return [(a.name, Path(a.path)) for a in found if read_manifest(Path(a.path)).get("base_checksum") == checksum]


def measure_adapters(settings: Settings, options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """NF4 base + options['adapters'] adapters (installed ones first, random ones fill up), in serving state."""
    import torch
    from peft import PeftModel

    from adapters.base_model import load_base
    from measurement.bench.random_lora import adapter_bytes, write_random_lora

    wanted = int(options.get("adapters", 0))
    rss_imports = _baseline_rss()
    loaded = load_base(settings.with_overrides(quantization="4bit"), progress=False)
    chosen = [(name, path, "installed") for name, path in _installed(settings, loaded.checksum)][:wanted]
    ids = torch.tensor([loaded.tokenizer.encode("你好，我想了解老人护理。", add_special_tokens=False)])
    peft: Any = None
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        for i in range(len(chosen), wanted):
            name = f"bench-random-{i + 1:02d}"
            folder = write_random_lora(
                loaded.model, Path(tmp) / name, name, name, loaded.model_id, loaded.checksum, seed=i
            )
            chosen.append((name, folder, "random"))
        for name, path, _source in chosen:  # all attached before the first forward, as the engine does
            if peft is None:
                peft = PeftModel.from_pretrained(loaded.model, str(path), adapter_name=name, is_trainable=False)
            else:
                peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        files_mib = sum(adapter_bytes(path) for _, path, _ in chosen) / 2**20
    with torch.inference_mode():
        if peft is None:
            loaded.model(input_ids=ids, use_cache=False)
        else:
            with peft.disable_adapter():
                peft(input_ids=ids, use_cache=False)  # the engine's warm-up, on the base route
            peft.set_adapter(chosen[0][0])
            peft(input_ids=ids, use_cache=False)  # and one answer through an adapter
    gc.collect()
    rss = rss_mib()
    switch_ms: list[float] = []
    if len(chosen) >= 2:
        for i in range(int(options.get("switches", 40))):
            started = time.perf_counter()
            peft.set_adapter(chosen[i % len(chosen)][0])
            switch_ms.append((time.perf_counter() - started) * 1000)
    log(f"[bench] memory: NF4 base + {len(chosen)} adapter(s): RSS {rss:.0f} MiB")
    lora_modules = sum(1 for n, _ in peft.named_modules() if n.endswith("lora_A")) if peft is not None else 0
    return {
        "adapters": len(chosen),
        "adapter_sources": sorted({source for _, _, source in chosen}),
        "adapter_files_mib": files_mib,
        "rss_after_imports_mib": rss_imports,
        "rss_mib": rss,
        "delta_mib": rss - rss_imports,
        **{f"{k}_mib": v for k, v in _rss_split().items()},
        "footprint_mib": loaded.model.get_memory_footprint() / 2**20,
        "switch_ms_p50": median(switch_ms),
        "switch_ms_p95": p95(switch_ms),
        "switches": len(switch_ms),
        "lora_modules": lora_modules,  # layers wrapped by LoRA (each holds every adapter)
    }


def measure_bf16(settings: Settings, options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """RSS of the base in bf16 after its first forward: what one merged model (merge_and_unload) occupies."""
    from adapters.base_model import load_base, warm_up

    before = _baseline_rss()
    loaded = load_base(settings.with_overrides(quantization="bf16"), progress=False)
    warm_up(loaded.model, loaded.tokenizer)  # touches every weight: mmapped pages become resident
    gc.collect()
    after = rss_mib()
    log(f"[bench] memory: one bf16 model: RSS {after:.0f} MiB")
    return {"bf16_delta_mib": after - before, "bf16_footprint_mib": loaded.model.get_memory_footprint() / 2**20}


def main_part(settings: Settings, options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Dispatch on options['what']: 'adapters' or 'bf16'."""
    if options.get("what") == "bf16":
        return measure_bf16(settings, options, log)
    return measure_adapters(settings, options, log)


if __name__ == "__main__":
    worker_main(main_part)
