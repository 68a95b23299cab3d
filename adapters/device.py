"""Which device and compute dtype the base model runs on, and which kernel will decode there."""

from __future__ import annotations

from pathlib import Path

import torch

from assistant.errors import ModelUnavailable


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
