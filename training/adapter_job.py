"""`train adapter`: data -> 4-bit base + LoRA -> trained, evaluated adapter folder with manifest, plot and route."""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters import wiring
from adapters.cache import sha256_file, swap_in
from adapters.registry import NAME_PATTERN, ROUTE_EXAMPLES, install_target, read_manifest, scan_adapters, write_manifest
from assistant.config import REPO_ROOT, Settings
from assistant.errors import UsageError
from data.identity import load_identity
from data.labels import load_labelled
from data.sft import SFTSample, load_sft_file, samples_checksum
from training import router_refit
from training.config import TrainConfig
from training.identity_data import identity_samples
from training.identity_probe import format_results, load_probe, summary

RESERVED_ROUTES = ("general", "base", "auto")
LOSS_PLOT = "loss.png"
SAMPLES = "samples.md"

#: Config keys that change the trained weights; the others (probe, samples) may differ on --resume.
_AFTER_TRAINING_KEYS = {
    "probe",
    "probe_max_new_tokens",
    "samples_file",
    "samples_count",
    "samples_max_new_tokens",
    "save_dtype",
    "repetition_penalty",
}


@dataclass(frozen=True)
class AdapterJob:
    """One `train adapter` run."""

    name: str
    data_file: Path
    config: TrainConfig
    route: str | None = None  # None: route = name, and the router is not taught about it
    route_examples: Path | None = None
    route_texts: tuple[str, ...] | None = None  # pre-read examples (train identity keeps the old ones)
    force: bool = False
    resume: bool = False
    config_file: str = ""
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # added to the manifest as is


def check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise UsageError(f"bad {what} {value!r}", "use letters, digits, '-' and '_' (start with a letter or digit)")
    return value


def resolve_system_prompt(setting: str) -> str | None:
    """'identity' -> the product's identity system prompt, 'none' -> no system turn, else the text itself."""
    if setting == "identity":
        return load_identity().system_prompt()
    if setting.lower() == "none":
        return None
    return setting


def relative_to_repo(path: Path) -> str:
    """Paths in manifests are repo-relative when possible, so a clone elsewhere can retrain."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        return str(resolved)


def _fingerprint(config: TrainConfig, data_sum: str, identity_sum: str, base_sum: str, system: str | None) -> str:
    relevant = {k: v for k, v in config.as_dict().items() if k not in _AFTER_TRAINING_KEYS}
    blob = json.dumps([relevant, data_sum, identity_sum, base_sum, system], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _preflight(job: AdapterJob, settings: Settings) -> tuple[list[SFTSample], list[SFTSample], str, list[str]]:
    """Everything that can fail cheaply, before a model is loaded: names, data, route ownership, examples."""
    install_target(settings.adapters_dir, job.name)  # a name or store that could touch code stops here
    route = check_name(job.route or job.name, "route")
    if route in RESERVED_ROUTES:
        raise UsageError(f"route {route!r} is reserved", "the general route is the plain base; pick another name")
    domain = load_sft_file(job.data_file)  # BadInputFile names file and line; nothing is trained
    for adapter in scan_adapters(settings.adapter_dirs)[0]:
        if adapter.route == route and adapter.name != job.name:
            raise UsageError(
                f"route {route!r} is already served by adapter {adapter.name!r}",
                f"retrain that adapter (--name {adapter.name}) or choose another --route",
            )
    identity = identity_samples(job.config.identity_samples, job.config.seed) if job.config.identity else []
    texts: list[str] = []
    if job.route is not None:
        if job.route_texts is not None:
            texts = list(job.route_texts)
        elif job.route_examples is not None:
            texts = router_refit.read_route_examples(job.route_examples, route)
        else:
            texts = list(dict.fromkeys(s.prompt for s in domain))
    return domain, identity, route, texts


def run_adapter_job(
    job: AdapterJob,
    settings: Settings,
    log: Callable[[str], None],
    encoder_factory: Callable[[Settings], Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and install adapters/NAME; returns the manifest written."""
    started = time.perf_counter()
    domain, identity, route, route_texts = _preflight(job, settings)
    log(
        f"data: {len(domain)} samples from {job.data_file}" + (f" + {len(identity)} identity pairs" if identity else "")
    )
    encoder, check = None, None
    if job.route is not None:
        encoder = router_refit.MemoEncoder((encoder_factory or wiring.build_encoder)(settings))
        existing = load_labelled(wiring.routing_files(settings, skip=job.name))
        check = router_refit.check_route(encoder, existing, route, route_texts, log)
        log(check.format())
        if check.drop > router_refit.MAX_DROP:
            if not job.force:
                raise UsageError(
                    f"adding route {route!r} drops routing accuracy on the existing labelled data by "
                    f"{check.drop * 100:.1f} points (more than {router_refit.MAX_DROP * 100:.0f}); nothing was trained",
                    "give fewer, more typical examples with --route-examples FILE, or pass --force",
                )
            log(f"warning: accuracy drops by {check.drop * 100:.1f} points; continuing because of --force")

    trained = _train(job, settings, domain, identity, route, route_texts, check, log)
    if job.route is not None:
        files = wiring.routing_files(settings)
        result, folder = router_refit.refit_and_store(encoder, files, log)
        log(
            f"router refitted with route {route!r}: cross-validated accuracy {result.cv_report.accuracy:.1%} "
            f"on {len(result.stored.example_labels)} examples; stored in {folder}"
        )
    log(f"done in {time.perf_counter() - started:.0f} s: {settings.adapters_dir / job.name}")
    return trained


def _train(
    job: AdapterJob,
    settings: Settings,
    domain: list[SFTSample],
    identity: list[SFTSample],
    route: str,
    route_texts: Sequence[str],
    check: router_refit.RouterCheck | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The heavy part: load, tokenize, train, save, then evaluate on a fresh model and install."""
    import torch

    from adapters.base_model import load_base
    from training.dataset import split_samples, tokenize

    cfg = job.config
    final = install_target(settings.adapters_dir, job.name)
    system = resolve_system_prompt(cfg.system_prompt)
    probe_questions = load_probe() if cfg.probe else []
    sample_questions = []
    if cfg.samples_file:
        from training.post_eval import load_questions

        sample_questions = load_questions(REPO_ROOT / cfg.samples_file, cfg.samples_count)

    loaded = load_base(settings, progress=job.progress)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_samples, val_samples = split_samples([*domain, *identity], cfg.val_fraction, cfg.val_max, cfg.seed)
    train_tok = tokenize(train_samples, tokenizer, system, cfg.max_length)
    val_tok = tokenize(val_samples, tokenizer, system, cfg.max_length)
    masked = train_tok.masked + val_tok.masked
    if masked:
        # Reported, never silently trained: these samples would contribute no loss at all.
        log(
            f"warning: {len(masked)} sample(s) have no answer token left within max_length={cfg.max_length} "
            f"(system + prompt fill it) and are skipped: {', '.join(masked[:10])}{' ...' if len(masked) > 10 else ''}"
        )
    truncated = train_tok.truncated + val_tok.truncated
    if truncated:
        log(cut_report(truncated, len(train_samples) + len(val_samples), cfg.max_length))
    if not len(train_tok):
        raise UsageError(
            f"no training sample has an answer token within max_length={cfg.max_length}",
            "raise max_length (--max-length) or shorten the prompts",
        )
    lengths = [len(r) for r in train_tok.input_ids]
    log(
        f"tokens per sample: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; "
        f"{train_tok.label_tokens()} labelled tokens in {len(train_tok)} training samples"
    )

    data_sum = sha256_file(Path(job.data_file))
    identity_sum = samples_checksum(identity)
    fingerprint = _fingerprint(cfg, data_sum, identity_sum, loaded.checksum, system)
    model = _lora_model(loaded, cfg)

    from training.checkpoints import CheckpointStore
    from training.sft import SFTLoop

    store = CheckpointStore(final / "checkpoints")
    device = loaded.info.device
    base = {
        "base_model": loaded.model_id,
        "base_checksum": loaded.checksum,
        "base_display": loaded.info.base_model,
        "quantization": loaded.info.quantization,
        "device": device,
        "kernel": loaded.info.kernel,
    }
    loop = SFTLoop(model, train_tok, val_tok, cfg, store, pad_id, device, log, progress=job.progress)
    outcome = loop.run(job.resume, fingerprint)
    state = outcome.state
    log(
        f"trained {state.step} steps in {outcome.train_seconds:.0f} s ({outcome.train_seconds / max(state.step, 1):.2f}"
        f" s/step), {outcome.stopped}; best validation loss {state.best_val:.4f} at step {state.best_step}"
    )

    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{job.name}.tmp", dir=final.parent))
    work = staging / job.name  # the folder must carry the adapter's name for write_manifest
    try:
        work.mkdir()
        if cfg.save_dtype == "bf16":  # the trained model is not used again: cast in place before saving
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
        model.save_pretrained(str(work))
        (work / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        _record_base(work / "adapter_config.json", base["base_model"])
        del model, loop, loaded
        gc.collect()

        from training.post_eval import evaluate_fresh, samples_markdown

        post = evaluate_fresh(
            lambda: load_base(settings, progress=False),
            work,
            job.name,
            route,
            val_tok,
            pad_id,
            cfg.batch_size * 2,
            system,
            probe_questions,
            cfg.probe_max_new_tokens,
            sample_questions,
            cfg.samples_max_new_tokens,
            log,
            cfg.repetition_penalty or None,
        )
        gc.collect()
        if post.probe:
            log("identity probe (general = base + system prompt):\n" + format_results(post.probe))
        if post.samples:
            note = "with the identity system prompt" if system else "without a system prompt"
            (work / SAMPLES).write_text(
                samples_markdown(
                    job.name, post.samples, cfg.samples_max_new_tokens, note, cfg.repetition_penalty or None
                ),
                encoding="utf-8",
            )
        from training.plot import save_loss_plot

        save_loss_plot(
            work / LOSS_PLOT, state.train_losses, state.val_losses, f"{job.name}: QLoRA r={cfg.r}", state.best_step
        )
        if job.route is not None:
            router_refit.write_route_examples(work / ROUTE_EXAMPLES, route_texts, route)
        manifest = _manifest(
            job,
            cfg,
            route,
            base,
            fingerprint,
            data_sum,
            identity_sum,
            domain,
            identity,
            train_tok,
            val_tok,
            outcome,
            post,
            check,
            route_texts,
            torch.__version__,
        )
        write_manifest(work, **manifest)
        _install(work, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_manifest(final)


def cut_report(truncated: Sequence[str], total: int, max_length: int) -> str:
    """The line about answers cut at max_length: a note for a few, a warning when over 10% are cut."""
    # A few long answers cut is normal; many cut means the model learns half-answers.
    level = "warning" if len(truncated) * 10 > total else "note"
    listed = f"{', '.join(truncated[:5])}{' ...' if len(truncated) > 5 else ''}"
    text = f"{level}: {len(truncated)} of {total} answer(s) cut at max_length={max_length}: {listed}"
    if level == "warning":
        text += " (raise --max-length; the system prompt alone takes part of it)"
    return text


def _record_base(adapter_config: Path, model_id: str) -> None:
    """Name the base in adapter_config.json (peft wrote the local cache path it was loaded from).

    Done after saving: peft's save_pretrained tries to read the config of whatever this names.
    """
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = model_id
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _lora_model(loaded: Any, cfg: TrainConfig) -> Any:
    """prepare_model_for_kbit_training + LoRA on the freshly loaded base."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        for param in model.parameters():
            param.requires_grad = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    torch.manual_seed(cfg.seed)  # LoRA A matrices are random: same seed, same start
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules_for_peft,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _install(work: Path, final: Path) -> None:
    """Swap the finished folder in (the old adapter and the checkpoints go); a crash leaves the old one."""
    for path in work.iterdir():  # temp-file writers create 0600 files; adapters are shared, readable data
        path.chmod(0o644)
    swap_in(work, final)


def _manifest(
    job: AdapterJob,
    cfg: TrainConfig,
    route: str,
    base: dict[str, str],
    fingerprint: str,
    data_sum: str,
    identity_sum: str,
    domain: Sequence[SFTSample],
    identity: Sequence[SFTSample],
    train_tok: Any,
    val_tok: Any,
    outcome: Any,
    post: Any,
    check: router_refit.RouterCheck | None,
    route_texts: Sequence[str],
    torch_version: str,
) -> dict[str, Any]:
    """Everything the issue asks a manifest to record (registry keys first)."""
    import peft
    import transformers

    state = outcome.state
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
    return {
        "name": job.name,
        "route": route,
        **base,
        "metrics": metrics,
        "data": {
            "file": relative_to_repo(job.data_file),
            "checksum": data_sum,
            "samples": len(domain),
            "identity_samples": len(identity),
            "identity_checksum": identity_sum,
            "train_samples": len(train_tok),
            "val_samples": len(val_tok),
            "masked_samples": train_tok.masked + val_tok.masked,
            "truncated_samples": len(train_tok.truncated) + len(val_tok.truncated),
            "route_examples": len(set(route_texts)),
        },
        "config": {**cfg.as_dict(), "config_file": job.config_file},
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
        "fingerprint": fingerprint,
        "versions": {"torch": torch_version, "transformers": transformers.__version__, "peft": peft.__version__},
        **job.extra,
    }


def _num(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN -> null (JSON has no NaN)


def _nums(values: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in values.items()}
