"""The configured base as vLLM loads it: a Hugging Face folder (our bf16 export when the base is a GGUF file)."""

from __future__ import annotations

import os
from pathlib import Path

from adapters.vllm_venv import vllm_home
from assistant.config import Settings


def base_model_folder(settings: Settings) -> Path:
    """A Hugging Face folder of the configured base that vLLM loads: the base itself, or our bf16 export of a GGUF."""
    from adapters.base_model import _bf16_folder  # the GGUF conversion the local engine caches too
    from adapters.base_source import resolve_source

    source = resolve_source(settings.base, progress=True)
    folder = _bf16_folder(source, progress=True)
    if source.kind != "gguf":
        return folder
    # A link named after the model, so the served model's root names the model rather than a cache key.
    link = vllm_home() / "models" / source.display.replace("/", "_")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) != folder:
        link.unlink()
    if not link.exists():
        link.symlink_to(folder, target_is_directory=True)
    return link


def base_checksum(settings: Settings) -> str:
    """The checksum adapter manifests must carry to be served on the configured base."""
    from adapters.base_source import resolve_source

    return resolve_source(settings.base, progress=False).checksum
