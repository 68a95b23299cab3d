"""Random LoRA adapters shaped for a loaded base: stand-ins when too few real adapters are installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adapters.registry import write_manifest

#: Every linear layer but the output head: what the training recipe targets ("all-linear").
SKIP = ("lm_head",)


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} of the base's linear layers (NF4 or dense alike)."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        # A model that already carries peft wrappers: the wrapped layer stands for its parent.
        name = name.removesuffix(".base_layer")
        if name.split(".")[-1] in SKIP or not hasattr(module, "in_features") or not hasattr(module, "out_features"):
            continue
        if "lora_" in name or hasattr(module, "base_layer"):
            continue
        shapes[name] = (int(module.in_features), int(module.out_features))
    prefix = "base_model.model."  # names seen through a PeftModel carry peft's wrapper prefix
    shapes = {k.removeprefix(prefix): v for k, v in shapes.items()}
    return shapes


def write_random_lora(
    model: Any,
    out_dir: Path,
    name: str,
    route: str,
    base_model: str,
    base_checksum: str,
    seed: int = 0,
    r: int = 8,
) -> Path:
    """Write a peft LoRA folder (r, alpha 2r, all linear layers, non-zero B) + manifest.json for `model`.

    The weights are random, so the adapter computes as much as a trained one of the same rank
    (same modules, same shapes, fp32 like peft keeps them) without a training run.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = linear_shapes(model)
    if not shapes:
        raise ValueError("the model has no linear layers to adapt")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module, (n_in, n_out) in shapes.items():
        # A like peft's kaiming init; B small and non-zero so the adapter really changes the outputs.
        bound = 1.0 / n_in**0.5
        tensors[f"base_model.model.{module}.lora_A.weight"] = (torch.rand(r, n_in, generator=generator) * 2 - 1) * bound
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(n_out, r, generator=generator) * 0.01
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = sorted({m.split(".")[-1] for m in shapes})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_manifest(
        out_dir,
        name=name,
        route=route,
        base_model=base_model,
        base_checksum=base_checksum,
        metrics={"random": True, "note": "random weights written by the benchmark"},
    )
    return out_dir


def adapter_bytes(folder: Path) -> int:
    """Size of an adapter's weight files."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
