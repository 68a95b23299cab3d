"""What the numbers were measured on: CPU, cores, RAM, library versions, AVX512-BF16, load, RSS readers."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assistant.config import REPO_ROOT

_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "sentence-transformers", "llama-cpp-python")


def _cpuinfo() -> tuple[str, set[str], int]:
    """(model name, flags, physical cores) from /proc/cpuinfo; physical cores = distinct (package, core) pairs."""
    model = platform.processor() or "unknown"
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    package = core = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    package = value
                elif key == "core id":
                    core = value
                    cores.add((package, core))
    except OSError:
        pass
    return model, flags, len(cores) or (os.cpu_count() or 1)


def _ram_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit(repo: Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def load_average() -> float:
    """The 1-minute load average (the number of runnable processes: > cores means we are sharing)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return 0.0


def describe_machine() -> dict[str, Any]:
    """The machine block of the bench JSON."""
    model, flags, physical = _cpuinfo()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cores_logical": os.cpu_count() or 1,
        "cores_physical": physical,
        "ram_gib": round(_ram_gib(), 1),
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512f": "avx512f" in flags,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "git_commit": _git_commit(),
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; psutil elsewhere)."""
    try:
        return _status_kib("VmRSS") / 1024
    except OSError:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> float:
    """Highest resident set size this process has had, in MiB."""
    try:
        return _status_kib("VmHWM") / 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
