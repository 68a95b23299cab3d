"""Resumable training checkpoints: LoRA weights, optimizer, scheduler and loop state, written atomically."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adapters.cache import atomic_dir
from assistant.errors import UsageError

STATE = "state.json"
WEIGHTS = "lora.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
BEST = "best"
KEEP = 2  # step checkpoints kept; older ones are deleted


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped (JSON)."""

    fingerprint: str = ""
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next micro-batch
    position: int = 0  # index of the next micro-batch in that epoch
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    base_val_loss: float = float("nan")
    base_val_by_kind: dict[str, float] = field(default_factory=dict)
    last_val_by_kind: dict[str, float] = field(default_factory=dict)
    train_losses: list[list[float]] = field(default_factory=list)  # [step, loss]
    val_losses: list[list[float]] = field(default_factory=list)  # [step, loss]
    train_seconds: float = 0.0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoopState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) tensors by parameter name."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved LoRA tensors back into the model; a missing or extra name means a different job."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        raise UsageError("the checkpoint's LoRA layers do not match this model", "start over without --resume")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device, param.dtype))


def atomic_folder(final: Path, write: Any) -> Path:
    """Run write(tmp) on a temp folder beside `final`, then swap it in: readers never see half a folder."""
    with atomic_dir(final, marker=False) as tmp:
        write(tmp)
    return final


class CheckpointStore:
    """Checkpoints of one training job in `folder` (adapters/NAME/checkpoints/, git-ignored)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def steps(self) -> list[Path]:
        """Complete step checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.glob("step-*") if (p / STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def clear(self) -> None:
        """Forget an earlier run (a fresh start must not resume into someone else's state later)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def save(self, model: Any, optimizer: Any, scheduler: Any, state: LoopState) -> Path:
        """Write step-N atomically and keep the newest KEEP."""

        def write(tmp: Path) -> None:
            save_file(trainable_state(model), str(tmp / WEIGHTS))
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
            torch.save(scheduler.state_dict(), tmp / SCHEDULER)
            (tmp / STATE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")

        path = atomic_folder(self.folder / f"step-{state.step:06d}", write)
        for old in self.steps()[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def save_best(self, model: Any, state: LoopState) -> None:
        """The weights with the best validation loss so far (what the adapter will be)."""

        def write(tmp: Path) -> None:
            save_file(trainable_state(model), str(tmp / WEIGHTS))
            (tmp / STATE).write_text(json.dumps({"step": state.step, "val_loss": state.best_val}), encoding="utf-8")

        atomic_folder(self.folder / BEST, write)

    def load_best(self, model: Any) -> bool:
        """Put the best weights back into the model; False when there are none."""
        path = self.folder / BEST / WEIGHTS
        if not path.is_file():
            return False
        load_trainable(model, load_file(str(path)))
        return True

    def resume(self, model: Any, optimizer: Any, scheduler: Any, fingerprint: str) -> LoopState:
        """Restore the newest checkpoint of this very job; UsageError when there is none or it differs."""
        steps = self.steps()
        if not steps:
            raise UsageError(f"--resume: no checkpoint in {self.folder}", "run the command without --resume")
        latest = steps[-1]
        state = LoopState.from_json(json.loads((latest / STATE).read_text(encoding="utf-8")))
        if state.fingerprint != fingerprint:
            raise UsageError(
                f"--resume: the checkpoint in {latest} belongs to a different job (data, config or base changed)",
                "run the same command as before, or start over without --resume",
            )
        load_trainable(model, load_file(str(latest / WEIGHTS)))
        # Our own files, but still loaded tensors-only: no pickled code runs.
        optimizer.load_state_dict(torch.load(latest / OPTIMIZER, weights_only=True))
        scheduler.load_state_dict(torch.load(latest / SCHEDULER, weights_only=True))
        return state
