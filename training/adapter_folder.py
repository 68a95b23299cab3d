"""Writing a trained adapter's folder (weights, loss plot, route examples, manifest) and swapping it in."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.cache import swap_in
from adapters.registry import ROUTE_EXAMPLES, write_manifest
from assistant.config import REPO_ROOT
from data.knowledge import KNOWLEDGE_DIR, KnowledgeEntry
from training import router_refit
from training.identity_probe import summary
from training.job_inputs import AdapterJob, JobInputs
from training.lora_run import LoraRun

if TYPE_CHECKING:  # post_eval imports torch
    from training.post_eval import PostEval

LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class ManifestFacts:
    """What each step of a job found out, as the manifest records it."""

    job: AdapterJob
    inputs: JobInputs
    run: LoraRun
    post: PostEval
    router_check: router_refit.RouterCheck | None  # None when the job does not touch routing


def relative_to_repo(path: Path) -> str:
    """Paths in manifests are repo-relative when possible, so a clone elsewhere can retrain."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        return str(resolved)


@contextmanager
def staging_folder(final: Path) -> Iterator[Path]:
    """An empty folder named like `final` in a hidden temp dir beside it; removed with everything left in it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    work = staging / final.name  # the folder must carry the adapter's name for write_manifest
    try:
        work.mkdir()
        yield work
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_weights(model: Any, folder: Path, save_dtype: str, base_model: str) -> None:
    """The LoRA weights and adapter_config.json (naming `base_model`); bf16 casts the trained model in place."""
    import torch

    if save_dtype == "bf16":  # the trained model is not used again
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    model.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    _record_base(folder / "adapter_config.json", base_model)


def _record_base(adapter_config: Path, model_id: str) -> None:
    """Name the base in adapter_config.json (peft wrote the local cache path it was loaded from).

    Done after saving: peft's save_pretrained tries to read the config of whatever this names.
    """
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = model_id
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_records(folder: Path, facts: ManifestFacts) -> None:
    """Beside the weights: the loss plot, the route examples (when the job teaches a route) and the manifest."""
    from training.plot import save_loss_plot

    job, state = facts.job, facts.run.outcome.state
    title = f"{job.name}: QLoRA r={job.config.r}"
    save_loss_plot(folder / LOSS_PLOT, state.train_losses, state.val_losses, title, state.best_step)
    if job.route is not None:
        router_refit.write_route_examples(folder / ROUTE_EXAMPLES, facts.inputs.route_texts, facts.inputs.route)
    copy_knowledge(folder, facts.inputs.knowledge, facts.inputs.route)
    write_manifest(folder, **manifest_fields(facts))


def copy_knowledge(folder: Path, entries: list[KnowledgeEntry], route: str) -> None:
    """Ship the entries the adapter was trained to answer from in its knowledge/ folder.

    The product's own entries for the route (data/knowledge/ROUTE/) are found at run time anyway,
    so only entries from elsewhere are copied.
    """
    own = (KNOWLEDGE_DIR / route).resolve()
    outside = [e for e in entries if Path(e.path).resolve().parent != own]
    if not outside:
        return
    (folder / "knowledge").mkdir()
    for entry in outside:
        shutil.copyfile(entry.path, folder / "knowledge" / Path(entry.path).name)


def install(folder: Path, final: Path) -> None:
    """Swap the finished folder in (the old adapter and the checkpoints go); a crash leaves the old one."""
    for path in folder.rglob("*"):  # temp-file writers create 0600 files; adapters are shared, readable data
        path.chmod(0o755 if path.is_dir() else 0o644)
    swap_in(folder, final)


def manifest_fields(facts: ManifestFacts) -> dict[str, Any]:
    """The manifest: the registry's keys first, then data, recipe, training run, losses and versions."""
    import peft
    import torch
    import transformers

    job, run, post = facts.job, facts.run, facts.post
    outcome, state = run.outcome, run.outcome.state
    return {
        "name": job.name,
        "route": facts.inputs.route,
        **run.base,
        "metrics": _metrics(facts),
        "data": _data_record(facts),
        "config": {**job.config.as_dict(), "config_file": job.config_file},
        "steps": state.step,
        "best_step": state.best_step,
        "epochs": round(state.step / max(outcome.steps_per_epoch, 1), 2),
        "stopped": outcome.stopped,
        "wall_time_s": round(outcome.train_seconds, 1),
        "seconds_per_step": round(outcome.train_seconds / max(state.step, 1), 2),
        "peak_memory_mb": round(outcome.peak_memory_mb, 1),
        "val_loss": {
            "base": _num(post.val_loss_base),
            "adapter": _num(post.val_loss_adapter),
            "during_training": [[s, _num(v)] for s, v in state.val_losses],
        },
        "fingerprint": run.fingerprint,
        "knowledge": {
            "dir": relative_to_repo(job.knowledge) if job.knowledge else None,
            "entries": len(facts.inputs.knowledge),
            "grounded_samples": sum(s.grounded for s in facts.inputs.domain),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        **job.extra,
    }


def _metrics(facts: ManifestFacts) -> dict[str, Any]:
    """Validation losses on the fresh model, the identity probe and, for a routed job, the router check."""
    post, check = facts.post, facts.router_check
    metrics: dict[str, Any] = {
        "val_loss_base": _num(post.val_loss_base),
        "val_loss_adapter": _num(post.val_loss_adapter),
        "val_loss_by_kind": {"base": _nums(post.val_by_kind_base), "adapter": _nums(post.val_by_kind_adapter)},
        "identity_probe": summary(post.probe) if post.probe else {},
    }
    if check is not None:
        metrics["router"] = {
            "accuracy_existing_before": round(check.before, 4),
            "accuracy_existing_after": round(check.after_existing, 4),
            "accuracy_all_after": round(check.after_all, 4),
        }
    return metrics


def _data_record(facts: ManifestFacts) -> dict[str, Any]:
    """Which data was trained on, and what tokenizing kept, cut and dropped."""
    inputs, run = facts.inputs, facts.run
    return {
        "file": relative_to_repo(facts.job.data_file),
        "checksum": run.data_checksum,
        "samples": len(inputs.domain),
        "identity_samples": len(inputs.identity),
        "identity_checksum": run.identity_checksum,
        "train_samples": len(run.train),
        "val_samples": len(run.val),
        "masked_samples": run.train.masked + run.val.masked,
        "truncated_samples": len(run.train.truncated) + len(run.val.truncated),
        "route_examples": len(set(inputs.route_texts)),
    }


def _num(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN -> null (JSON has no NaN)


def _nums(values: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in values.items()}
