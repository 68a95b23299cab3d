"""Load the base chat model as a cached NF4 or bf16 checkpoint (verified before use), then warm it up."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters import bundled_gguf
from adapters.base_source import BaseSource, base_log, resolve_source
from adapters.cache import CacheCheck, atomic_dir, cache_path, check_cache
from adapters.device import kernel_description, pick_device
from adapters.gguf_convert import convert_gguf
from adapters.offline import force_offline
from assistant.config import Settings
from assistant.engine import EngineInfo
from assistant.errors import ModelUnavailable

# Importing this module is the doorway to transformers/bitsandbytes: make sure they start offline
# and quiet even when the caller forgot (idempotent; user-set variables win).
force_offline()

#: Bump when the conversion or quantization recipe changes: every cached checkpoint is rebuilt.
CACHE_FORMAT = 1
#: Attribute `warm_up` sets on a model: it has served inference and must never be trained
#: (bitsandbytes' CPU repack breaks QLoRA gradients afterwards; see docs/MODELS.md).
INFERENCE_ONLY_ATTR = "yijia_inference_only"


@dataclass
class LoadedBase:
    """A loaded base model with what adapters and the status bar need to know about it."""

    model: Any
    tokenizer: Any
    info: EngineInfo
    model_id: str  # written to adapter manifests as base_model
    checksum: str  # written to adapter manifests as base_checksum; identifies the weights


# ---------------------------------------------------------------- cached checkpoints


def _build_cache(final: Path, facts: dict[str, object], build: Callable[[Path], dict[str, object]]) -> None:
    """Write `final` with `build(tmp)`; the marker records `facts`, what `build` returns and the build time."""
    record: dict[str, object] = dict(facts)
    # atomic_dir reads `record` on exit, so the facts added here reach the marker.
    with atomic_dir(final, record) as tmp:
        started = time.perf_counter()
        record.update(build(tmp))
        record["build_seconds"] = round(time.perf_counter() - started, 1)


def _bf16_folder(source: BaseSource, progress: bool) -> Path:
    """A bf16/fp32 safetensors folder for `source`: the folder itself, or the cached GGUF conversion."""
    if source.kind == "folder":
        assert source.path is not None
        return source.path
    final = cache_path("models", f"{source.cache_key}-bf16")
    facts: dict[str, object] = {"format": CACHE_FORMAT, "source_sha256": source.checksum}
    check = check_cache(final, facts)
    if not check.ok:
        check.announce_rebuild()
        gguf = source.path or bundled_gguf.bundled_gguf_path(progress=progress)
        _build_cache(final, facts, lambda tmp: convert_gguf(gguf, tmp, lambda line: base_log(progress, line)))
    return final


# ---------------------------------------------------------------- loading


def _bnb_config(compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def _from_pretrained(folder: Path, device: str, dtype: torch.dtype, quantization_config: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # 0, or the rank's GPU under torchrun
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=dtype,
        local_files_only=True,
        use_safetensors=True,  # the model wheels are untrusted: tensors only, never pickle
        trust_remote_code=False,
        output_loading_info=True,
        **kwargs,
    )
    model, report = loaded
    missing = sorted(report.get("missing_keys", []))
    if missing:  # transformers would silently leave them randomly initialised
        raise ModelUnavailable(f"{folder}: checkpoint lacks weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    model.eval()
    return model


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def _prequantized(folder: Path) -> str | None:
    """The quant method of a folder that is already quantized (AWQ, GPTQ, bnb...), else None."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config")
    return str(quant.get("quant_method", "quantized")) if isinstance(quant, dict) else None


def _nf4_model(source: BaseSource, device: str, dtype: torch.dtype, progress: bool) -> tuple[Any, Path]:
    """The NF4 model and its cache folder, (re)building the cache from the bf16 checkpoint when needed."""
    final = cache_path("models", f"{source.cache_key}-nf4-{str(dtype).removeprefix('torch.')}")
    import bitsandbytes

    facts: dict[str, object] = {
        "format": CACHE_FORMAT,
        "source_sha256": source.checksum,
        "bitsandbytes": bitsandbytes.__version__,
    }
    check = check_cache(final, facts)
    if check.ok:
        try:
            base_log(progress, f"loading the 4-bit model from {final}...")
            return _from_pretrained(final, device, dtype), final
        except Exception as exc:  # noqa: BLE001 -- intact files that no longer load are rebuilt, not fatal
            check = CacheCheck(final, "damaged", f"it no longer loads: {type(exc).__name__}: {exc}")
    check.announce_rebuild()
    bf16 = _bf16_folder(source, progress)
    built: list[Any] = []

    def build(tmp: Path) -> dict[str, object]:
        base_log(progress, "quantizing to NF4 (one-time, ~25 s)...")
        started = time.perf_counter()
        model = _from_pretrained(bf16, device, dtype, _bnb_config(dtype))
        seconds = round(time.perf_counter() - started, 1)
        # Saved before any forward pass: bitsandbytes repacks weights for its CPU kernel on the
        # first forward, and the cache must hold the portable layout.
        model.save_pretrained(tmp)
        _load_tokenizer(bf16).save_pretrained(tmp)
        built.append(model)
        return {"quantize_seconds": seconds, "footprint_bytes": int(model.get_memory_footprint())}

    _build_cache(final, facts, build)
    # The freshly quantized model is already in memory: no need to read back what was just saved.
    return built[0], final


def load_base(settings: Settings, progress: bool = True) -> LoadedBase:
    """Load settings.base in settings.quantization on the picked device, building caches once.

    Not warmed up: attach adapters first (peft's disable_adapter is bit-exact only then), then
    call `warm_up` (the engine does).
    """
    device, dtype = pick_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    source = resolve_source(settings.base, progress)
    started = time.perf_counter()
    try:
        with _transformers_bars(progress):
            if source.kind == "folder" and source.path is not None and (method := _prequantized(source.path)):
                # Already quantized by its publisher (AWQ, GPTQ, bnb...): load as shipped, no bnb on top.
                quantization, folder = method, source.path
                model = _from_pretrained(folder, device, dtype)
            elif settings.quantization == "4bit":
                quantization = "nf4"
                model, folder = _nf4_model(source, device, dtype, progress)
            else:
                quantization = "bf16" if dtype == torch.bfloat16 else "fp16"
                folder = _bf16_folder(source, progress)
                base_log(progress, f"loading the {quantization} model from {folder}...")
                model = _from_pretrained(folder, device, dtype)
            tokenizer = _load_tokenizer(folder)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(
            f"could not load the base model {source.display}: {type(exc).__name__}: {exc}",
            f"delete the cache folders under {cache_path('models')} and retry, or choose another --base",
        ) from exc
    base_log(progress, f"{source.display} ready ({quantization}, {device}) in {time.perf_counter() - started:.1f} s")
    info = EngineInfo(
        base_model=source.display,
        quantization=quantization,
        device=device,
        kernel=kernel_description(device, quantization),
    )
    return LoadedBase(model, tokenizer, info, source.model_id, source.checksum)


@contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """transformers' own loading/saving bars follow `progress` (they are process-global)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def warm_up(model: Any, tokenizer: Any, text: str = "你好, hello") -> float:
    """Run one short no-grad forward (bitsandbytes repacks 4-bit weights on the first); returns seconds.

    Marks the model inference-only (INFERENCE_ONLY_ATTR): never train this instance afterwards.
    """
    started = time.perf_counter()
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    setattr(model, INFERENCE_ONLY_ATTR, True)
    return time.perf_counter() - started


def prepare_models(settings: Settings, progress: bool = True) -> LoadedBase:
    """Build every cache the base needs, then load and warm it: `python main.py prepare`."""
    loaded = load_base(settings, progress)
    seconds = warm_up(loaded.model, loaded.tokenizer)
    footprint = loaded.model.get_memory_footprint() / 2**20
    base_log(progress, f"warm-up {seconds:.1f} s; {loaded.info.kernel}; {footprint:.0f} MiB")
    return loaded
