"""`train adapter`: data -> 4-bit base + LoRA -> trained, evaluated adapter folder with manifest, plot and route."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from adapters.registry import install_target, read_manifest
from assistant.config import Settings
from training.adapter_evaluation import evaluate_adapter, load_eval_questions
from training.adapter_folder import (
    ManifestFacts,
    install,
    relative_to_repo,
    save_weights,
    staging_folder,
    write_records,
)
from training.adapter_route import guard_route, refit_router
from training.job_inputs import AdapterJob, JobInputs, preflight
from training.lora_run import train_lora
from training.router_refit import RouterCheck

# What the commands use: the job, how to run it, and how its manifest spells paths.
__all__ = ["AdapterJob", "relative_to_repo", "run_adapter_job", "train_and_install"]


def run_adapter_job(
    job: AdapterJob,
    settings: Settings,
    log: Callable[[str], None],
    encoder_factory: Callable[[Settings], Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and install adapters/NAME; returns the manifest written.

    Under torchrun / accelerate launch (WORLD_SIZE > 1) every rank trains on its share of each
    batch; rank 0 alone logs, checks and refits the route, evaluates and installs, while the
    others wait for it and get the same manifest back.
    """
    from training import distributed

    started = time.perf_counter()
    with distributed.session(settings.device):
        if not distributed.is_main():
            log, job = _quiet, replace(job, progress=False)
        inputs = preflight(job, settings)
        log(
            f"data: {len(inputs.domain)} samples from {job.data_file}"
            + (f" + {len(inputs.identity)} identity pairs" if inputs.identity else "")
        )
        # The guard loads an encoder and may refuse the route: rank 0 checks, a refusal stops every rank.
        guard = distributed.main_only(lambda: guard_route(job, settings, inputs, log, encoder_factory))
        manifest = train_and_install(job, settings, inputs, guard.check if guard else None, log)
        distributed.main_only(lambda: refit_router(guard, settings, inputs.route, log) if guard else None)
    log(f"done in {time.perf_counter() - started:.0f} s: {settings.adapters_dir / job.name}")
    return manifest


def train_and_install(
    job: AdapterJob,
    settings: Settings,
    inputs: JobInputs,
    router_check: RouterCheck | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The heavy part: train, save, evaluate on a fresh model, write the folder and swap it in.

    Every rank trains; rank 0 alone does the rest, and the others return the manifest it wrote.
    """
    from training import distributed

    final = install_target(settings.adapters_dir, job.name)
    questions = load_eval_questions(job.config)
    model, run = train_lora(job, settings, inputs, final / "checkpoints", log)
    if not distributed.is_main():
        del model  # rank 0's fresh base for the evaluation needs the memory more
        gc.collect()
        manifest: dict[str, Any] = distributed.await_main()
        return manifest
    with distributed.main_work() as share:
        with staging_folder(final) as folder:
            save_weights(model, folder, job.config.save_dtype, run.base["base_model"])
            del model  # two bases never share the memory: the evaluation loads a fresh one
            gc.collect()
            post = evaluate_adapter(job, settings, inputs.route, run, questions, folder, log)
            write_records(folder, ManifestFacts(job, inputs, run, post, router_check))
            install(folder, final)
        manifest = read_manifest(final)
        share(manifest)
    return manifest


def _quiet(message: str) -> None:
    """The log of ranks other than 0: rank 0 reports for the whole job."""
