"""After training: measure the new adapter on a fresh base, log the identity probe and write samples.md."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.config import REPO_ROOT, Settings
from training.config import TrainConfig
from training.identity_probe import ProbeQuestion, format_results, load_probe
from training.job_inputs import AdapterJob
from training.lora_run import LoraRun

if TYPE_CHECKING:  # post_eval imports torch; it loads only when an evaluation starts
    from training.post_eval import PostEval

SAMPLES = "samples.md"


@dataclass(frozen=True)
class EvalQuestions:
    """What is asked after training; read before it, so a bad file fails before the training time is spent."""

    probe: list[ProbeQuestion]  # identity questions (empty when the recipe skips the probe)
    samples: list[dict[str, str]]  # held-out questions answered base vs adapter into samples.md


def load_eval_questions(cfg: TrainConfig) -> EvalQuestions:
    """The identity probe and the held-out sample questions the recipe asks for."""
    probe = load_probe() if cfg.probe else []
    samples: list[dict[str, str]] = []
    if cfg.samples_file:
        from training.post_eval import load_questions

        samples = load_questions(REPO_ROOT / cfg.samples_file, cfg.samples_count)
    return EvalQuestions(probe, samples)


def evaluate_adapter(
    job: AdapterJob,
    settings: Settings,
    route: str,
    run: LoraRun,
    questions: EvalQuestions,
    folder: Path,
    log: Callable[[str], None],
) -> PostEval:
    """Evaluate the adapter saved in `folder` on a freshly loaded base; logs the probe, writes samples.md there."""
    from adapters.base_model import load_base
    from training.post_eval import evaluate_fresh, samples_markdown

    cfg = job.config
    penalty = cfg.repetition_penalty or None
    post = evaluate_fresh(
        lambda: load_base(settings, progress=False),
        folder,
        job.name,
        route,
        run.val,
        run.pad_id,
        cfg.batch_size * 2,
        run.system,
        questions.probe,
        cfg.probe_max_new_tokens,
        questions.samples,
        cfg.samples_max_new_tokens,
        log,
        penalty,
    )
    gc.collect()
    if post.probe:
        log("identity probe (general = base + system prompt):\n" + format_results(post.probe))
    if post.samples:
        note = "with the identity system prompt" if run.system else "without a system prompt"
        (folder / SAMPLES).write_text(
            samples_markdown(job.name, post.samples, cfg.samples_max_new_tokens, note, penalty), encoding="utf-8"
        )
    return post
