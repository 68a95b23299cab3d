"""Where the base model comes from: settings.base resolved to a GGUF file or a safetensors folder, with its identity."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from adapters import bundled_gguf
from adapters.cache import DigestMemo, cache_path
from assistant.config import BUNDLED
from assistant.errors import ModelUnavailable


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


def base_log(progress: bool, message: str) -> None:
    """One `[base] ...` progress line on stderr, when progress is on."""
    if progress:
        print(f"[base] {message}", file=sys.stderr, flush=True)


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
    memo = DigestMemo(cache_path("models", "gguf-sums.json"))
    key = str(path.resolve())
    known = memo.remembered(path, key)
    if known is not None:
        return known
    base_log(progress, f"hashing {path.name} ({path.stat().st_size / 2**20:.0f} MiB)...")
    digest = memo.sha256(path, key)
    memo.save()
    return digest


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
