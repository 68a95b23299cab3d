"""Load the base chat model (bundled GGUF, .gguf file, folder or cached hub id) as a cached NF4/bf16 checkpoint."""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters import bundled_gguf
from adapters.cache import COMPLETE_MARKER, atomic_dir, atomic_write_bytes, cache_path, is_complete, sha256_file
from adapters.offline import force_offline
from assistant.config import BUNDLED, Settings
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
#: Tie lm_head to the token embeddings when they differ by less than this (relative Frobenius
#: norm). Two quantizations of one matrix differ by their quantization noise (Q5_0 vs Q8_0:
#: 0.044 on the bundled file); two unrelated matrices differ by about sqrt(2).
TIE_MAX_RELATIVE_DIFF = 0.15

_WEIGHTS = "model.safetensors"


@dataclass
class LoadedBase:
    """A loaded base model with what adapters and the status bar need to know about it."""

    model: Any
    tokenizer: Any
    info: EngineInfo
    model_id: str  # written to adapter manifests as base_model
    checksum: str  # written to adapter manifests as base_checksum; identifies the weights


@dataclass(frozen=True)
class BaseSource:
    """Where a base comes from: a GGUF file to convert or a folder of safetensors."""

    kind: str  # "gguf" | "folder"
    model_id: str
    display: str
    checksum: str
    path: Path | None = None  # None for the bundled GGUF until it is needed (joining costs seconds)

    @property
    def cache_key(self) -> str:
        return f"{self.kind}-{self.checksum[:16]}"


# ---------------------------------------------------------------- device, kernel, identity


def pick_device(pref: str) -> tuple[str, torch.dtype]:
    """("cuda"|"cpu", compute dtype): CUDA when present and wanted, bf16 where supported, else fp16."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {pref!r}")
    if pref != "cpu" and torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if pref == "cuda":
        raise ModelUnavailable("device 'cuda' was asked for, but torch sees no CUDA GPU", "use --device auto or cpu")
    return "cpu", torch.bfloat16


def cpu_has_avx512_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AVX512-BF16, which bitsandbytes' fast 4-bit CPU kernel needs."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split(":", 1)[-1].split()
    except OSError:
        pass
    return False


def kernel_description(device: str, quantization: str) -> str:
    """One line for the status bar / bench: which compute path decodes."""
    if device == "cuda":
        return f"bnb cuda {quantization}" if quantization == "nf4" else f"torch cuda {quantization}"
    fast = cpu_has_avx512_bf16()
    if quantization == "nf4":
        return "bnb cpu avx512-bf16" if fast else "bnb cpu (no avx512-bf16: slow path)"
    return f"torch cpu {quantization}" + (" (avx512-bf16)" if fast else "")


def folder_checksum(folder: Path) -> str:
    """Identity of a safetensors model folder: its config plus weight file names and sizes.

    Hashing the weights themselves would cost seconds per GB on every start; the config and
    the exact byte sizes of the weight files are enough to tell different bases apart.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{folder} is not a model folder: config.json unreadable ({exc})") from None
    for volatile in ("transformers_version", "_name_or_path"):  # change on re-save, not with the model
        config.pop(volatile, None)
    weights = sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))
    blob = json.dumps({"config": config, "weights": weights}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _gguf_sha256(path: Path, progress: bool) -> str:
    """sha256 of a user's .gguf, remembered by (path, size, mtime) so it is hashed once."""
    index = cache_path("models", "gguf-sums.json")
    st = path.stat()
    key = str(path.resolve())
    try:
        known: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    _say(progress, f"hashing {path.name} ({st.st_size / 2**20:.0f} MiB)...")
    digest = sha256_file(path)
    known[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    atomic_write_bytes(index, json.dumps(known, indent=1).encode())
    return digest


def resolve_source(base: str, progress: bool = True) -> BaseSource:
    """Turn settings.base into a BaseSource without loading anything heavy."""
    if base == BUNDLED:
        return BaseSource(
            "gguf",
            model_id="bundled:" + bundled_gguf.GGUF_NAME.removesuffix(".gguf"),
            display=bundled_gguf.MODEL_NAME,
            checksum=bundled_gguf.GGUF_SHA256,
        )
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelUnavailable(f"GGUF file {path} does not exist", "check the base setting / --base")
        return BaseSource("gguf", str(path.resolve()), path.name, _gguf_sha256(path, progress), path)
    if path.is_dir():
        return BaseSource("folder", str(path.resolve()), path.name, _safetensors_checksum(path), path)
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        folder = _hub_snapshot(base)
        return BaseSource("folder", base, base, _safetensors_checksum(folder), folder)
    raise ModelUnavailable(
        f"base model {base!r} is neither 'bundled', a folder, a .gguf file nor a Hugging Face id",
        "use --base bundled, a local folder, a .gguf file, or an id like Qwen/Qwen2.5-0.5B-Instruct",
    )


def _safetensors_checksum(folder: Path) -> str:
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) or ["none"]
        raise ModelUnavailable(
            f"{folder} holds no safetensors weights (found: {', '.join(pickled)})",
            "pickled weights are refused; convert the model to safetensors (save_pretrained does by default)",
        )
    return folder_checksum(folder)


def _hub_snapshot(repo_id: str) -> Path:
    """The local Hugging Face cache folder of `repo_id`; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 -- LocalEntryNotFoundError, a bad id...: all mean "not here"
        raise ModelUnavailable(
            f"{repo_id} is not in the local Hugging Face cache ({type(exc).__name__})",
            f"on a machine with internet run `hf download {repo_id}`, or point --base at a local folder",
        ) from None


# ---------------------------------------------------------------- cache helpers


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[base] {message}", file=sys.stderr, flush=True)


def _listing(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def _intact(folder: Path, facts: dict[str, object]) -> bool:
    """Finished, built by this recipe from this source, and no file missing or resized since."""
    if not is_complete(folder, facts):
        return False
    try:
        recorded = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8")).get("files") or {}
        return bool(recorded) and all(
            (folder / n).is_file() and (folder / n).stat().st_size == s for n, s in recorded.items()
        )
    except (OSError, ValueError, AttributeError):
        return False


def _build_cached(
    final: Path, facts: dict[str, object], build: Callable[[Path], dict[str, object]], what: str, progress: bool
) -> dict[str, object]:
    """Build `final` with `build(tmp)` unless an intact copy exists; returns the recorded facts."""
    if final.exists():
        _say(progress, f"{what}: cached copy at {final} is incomplete or stale; rebuilding")
    record: dict[str, object] = dict(facts)
    # atomic_dir writes `record` into the marker on exit, so facts added here are kept.
    with atomic_dir(final, record) as tmp:
        started = time.perf_counter()
        record.update(build(tmp))
        record["files"] = _listing(tmp)
        record["build_seconds"] = round(time.perf_counter() - started, 1)
    return record


# ---------------------------------------------------------------- GGUF -> bf16 checkpoint


def convert_gguf(gguf: Path, out: Path, progress: bool = True) -> dict[str, object]:
    """Write a bf16 safetensors checkpoint + tokenizer (with chat template) of `gguf` into `out`.

    Returns facts about the conversion (tie decision and the measured lm_head/embedding diff).
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    _say(progress, f"reading the tokenizer from {gguf.name} (one-time, ~20 s)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    _say(progress, f"de-quantizing {gguf.name} to bf16 (one-time, ~40 s, ~3 GB RAM)...")
    # dequantize=True: a plain dense model whatever transformers' packed-GGUF support becomes;
    # the conversion below needs ordinary tensors.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
        trust_remote_code=False,
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = model.config
    generation_config = model.generation_config
    del model
    gc.collect()

    facts: dict[str, object] = {"tied": bool(getattr(config, "tie_word_embeddings", False))}
    head, embed = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if head is not None and embed is not None and head.shape == embed.shape:
        diff = head.float() - embed.float()
        max_abs = float(diff.abs().max())
        relative = float(diff.norm() / head.float().norm())
        del diff
        facts.update(lm_head_max_abs_diff=max_abs, lm_head_relative_diff=relative)
        _say(progress, f"lm_head vs token embeddings: max abs diff {max_abs:.5f}, relative {relative:.4f}")
        if relative < TIE_MAX_RELATIVE_DIFF:
            # Two quantizations of one matrix: keep the output layer (it sets the logits, and
            # llama.cpp stores it at the higher precision) for both roles. Saves one
            # vocab x hidden matrix in memory and in every decode step.
            state["model.embed_tokens.weight"] = head
            del state["lm_head.weight"]
            config.tie_word_embeddings = True
            facts["tied"] = True
    # Written directly rather than via save_pretrained, which refuses GGUF-loaded models.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.bfloat16
    save_file(state, str(out / _WEIGHTS), metadata={"format": "pt"})
    del state
    gc.collect()
    config.save_pretrained(out)
    eos = generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    generation_config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    facts["convert_seconds"] = round(time.perf_counter() - started, 1)
    _say(progress, f"converted in {facts['convert_seconds']} s")
    return facts


def _bf16_folder(source: BaseSource, progress: bool) -> Path:
    """A bf16/fp32 safetensors folder for `source`: the folder itself, or the cached GGUF conversion."""
    if source.kind == "folder":
        assert source.path is not None
        return source.path
    final = cache_path("models", f"{source.cache_key}-bf16")
    facts: dict[str, object] = {"format": CACHE_FORMAT, "source_sha256": source.checksum}
    if not _intact(final, facts):
        gguf = source.path or bundled_gguf.bundled_gguf_path(progress=progress)
        _build_cached(final, facts, lambda tmp: convert_gguf(gguf, tmp, progress), "bf16 checkpoint", progress)
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
        kwargs["device_map"] = {"": 0}
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
    if _intact(final, facts):
        try:
            _say(progress, f"loading the 4-bit model from {final}...")
            return _from_pretrained(final, device, dtype), final
        except Exception as exc:  # noqa: BLE001 -- a cache that no longer loads is rebuilt, not fatal
            _say(progress, f"cached 4-bit model failed to load ({type(exc).__name__}: {exc}); rebuilding")
            shutil.rmtree(final, ignore_errors=True)
    bf16 = _bf16_folder(source, progress)
    built: list[Any] = []

    def build(tmp: Path) -> dict[str, object]:
        _say(progress, "quantizing to NF4 (one-time, ~25 s)...")
        started = time.perf_counter()
        model = _from_pretrained(bf16, device, dtype, _bnb_config(dtype))
        seconds = round(time.perf_counter() - started, 1)
        # Saved before any forward pass: bitsandbytes repacks weights for its CPU kernel on the
        # first forward, and the cache must hold the portable layout.
        model.save_pretrained(tmp)
        _load_tokenizer(bf16).save_pretrained(tmp)
        built.append(model)
        return {"quantize_seconds": seconds, "footprint_bytes": int(model.get_memory_footprint())}

    _build_cached(final, facts, build, "4-bit checkpoint", progress)
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
                _say(progress, f"loading the {quantization} model from {folder}...")
                model = _from_pretrained(folder, device, dtype)
            tokenizer = _load_tokenizer(folder)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(
            f"could not load the base model {source.display}: {type(exc).__name__}: {exc}",
            f"delete the cache folders under {cache_path('models')} and retry, or choose another --base",
        ) from exc
    _say(progress, f"{source.display} ready ({quantization}, {device}) in {time.perf_counter() - started:.1f} s")
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
    _say(progress, f"warm-up {seconds:.1f} s; {loaded.info.kernel}; {footprint:.0f} MiB")
    return loaded
