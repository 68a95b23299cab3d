"""What a vLLM server is started with: the adapters it can serve (and why others cannot), its command, its env."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.registry import CONFIG, read_manifest
from assistant.engine import AdapterInfo
from assistant.errors import AssistantError

#: The values vLLM accepts for --max-lora-rank; an adapter's rank is rounded up to one of them.
ALLOWED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: vLLM's own default: enough for the shipped adapter (r=8) and a retrained one of rank 16.
DEFAULT_RANK = 16
#: vLLM's LoRA kernels cover the decoder's linear layers, not the vocabulary matrices.
UNSUPPORTED_TARGETS = ("lm_head", "embed_tokens")
#: The served name of the base; an adapter is served under its own name.
BASE_NAME = "base"


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter vLLM can load, with the rank it needs."""

    name: str
    path: str
    rank: int


@dataclass(frozen=True)
class Skipped:
    """An installed adapter left out of the server, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class LaunchOptions:
    """Server knobs that do not come from the adapters."""

    port: int
    host: str = "127.0.0.1"
    max_model_len: int = 2048
    kv_cache_gib: int = 2  # VLLM_CPU_KVCACHE_SPACE on CPU
    gpus: int = 0
    tensor_parallel: int = 1
    max_lora_rank: int | None = None  # None: the adapters' highest rank, rounded up


def round_up_rank(rank: int) -> int | None:
    """The smallest --max-lora-rank value that holds `rank`, or None above vLLM's largest."""
    return next((allowed for allowed in ALLOWED_RANKS if allowed >= rank), None)


def lora_rank(config: dict[str, Any]) -> int:
    """The highest rank an adapter_config asks for (`r`, or a larger one in `rank_pattern`)."""
    ranks = [int(config.get("r") or 8)]
    pattern = config.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += [int(v) for v in pattern.values() if isinstance(v, int)]
    return max(ranks)


def _targets_problem(targets: Any) -> str | None:
    if isinstance(targets, str):
        if targets == "all-linear":
            return None  # peft expands it to the decoder's linear layers only
        named = [t for t in UNSUPPORTED_TARGETS if re.search(t, targets)]
    else:
        named = sorted({t for t in targets or [] for bad in UNSUPPORTED_TARGETS if str(t).split(".")[-1] == bad})
    return f"LoRA on {', '.join(named)} (vLLM adapts the linear layers only)" if named else None


def adapter_problem(folder: Path, base_checksum: str | None, rank_limit: int) -> str | None:
    """Why vLLM would reject the adapter in `folder` (or serve it on the wrong base), else None."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        manifest = read_manifest(folder)
    except (OSError, ValueError, AssistantError) as exc:
        return f"unreadable adapter files: {exc}"
    if not isinstance(config, dict):
        return f"{CONFIG} holds no JSON object"
    if base_checksum is not None and manifest.get("base_checksum") != base_checksum:
        return f"trained on another base ({manifest.get('base_model')!r})"
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return f"peft_type {config.get('peft_type')!r}: vLLM serves LoRA adapters only"
    if config.get("use_dora"):
        return "DoRA adapter: vLLM serves plain LoRA only"
    if problem := _targets_problem(config.get("target_modules")):
        return problem
    if config.get("modules_to_save"):
        return f"modules_to_save {config['modules_to_save']!r}: vLLM loads LoRA weights only, no full modules"
    rank = lora_rank(config)
    if rank > rank_limit:
        return f"rank {rank} is over the limit {rank_limit} (raise --max-lora-rank, up to {ALLOWED_RANKS[-1]})"
    return None


def choose_adapters(
    adapters: Sequence[AdapterInfo], base_checksum: str | None, max_lora_rank: int | None = None
) -> tuple[list[ServedAdapter], list[Skipped], int]:
    """The adapters vLLM can serve, the ones it cannot (with the reason), and the --max-lora-rank to use."""
    limit = max_lora_rank or ALLOWED_RANKS[-1]
    served: list[ServedAdapter] = []
    skipped: list[Skipped] = []
    for adapter in adapters:
        folder = Path(adapter.path)
        problem = adapter_problem(folder, base_checksum, limit)
        if problem:
            skipped.append(Skipped(adapter.name, problem))
            continue
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        served.append(ServedAdapter(adapter.name, str(folder), lora_rank(config)))
    needed = max([DEFAULT_RANK, *(a.rank for a in served)])
    rank = max_lora_rank or round_up_rank(needed) or ALLOWED_RANKS[-1]
    return served, skipped, rank


def tensor_parallel_size(gpus: int, config_json: Path) -> int:
    """The most GPUs (at most `gpus`) that split the model's attention heads evenly; 1 without GPUs."""
    if gpus <= 1:
        return 1
    try:
        heads = int(json.loads(config_json.read_text(encoding="utf-8")).get("num_attention_heads") or 1)
    except (OSError, ValueError):
        heads = 1
    return max(t for t in range(1, gpus + 1) if heads % t == 0)


def launch_command(
    python: Path, model: Path, adapters: Sequence[ServedAdapter], rank: int, options: LaunchOptions
) -> list[str]:
    """The vLLM OpenAI server's argv: the base as `base`, each adapter under its own name, loopback only."""
    argv = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",  # the module entry point ignores a bare path and would fetch a default model
        str(model),
        "--served-model-name",
        BASE_NAME,
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--max-model-len",
        str(options.max_model_len),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--enable-lora",  # always on: adapters trained later are loaded into the running server
        "--max-lora-rank",
        str(rank),
        # One slot more than the adapters at start, so one loaded live does not evict another.
        "--max-loras",
        str(len(adapters) + 1),
    ]
    if adapters:
        argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in adapters)]
    if options.tensor_parallel > 1:
        argv += ["--tensor-parallel-size", str(options.tensor_parallel)]
    return argv


def launch_env(base_env: dict[str, str], tmpdir: Path, options: LaunchOptions) -> dict[str, str]:
    """The server's environment: offline, runtime LoRA loading on, temp files in a folder of ours."""
    env = dict(base_env)
    env.update(
        {
            "TMPDIR": str(tmpdir),  # vLLM leaves vllm_dist_* files behind in the temp folder
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        }
    )
    if options.gpus == 0:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(options.kv_cache_gib)
    return env
