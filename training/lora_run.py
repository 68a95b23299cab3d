"""The training run: load the 4-bit base, tokenize the samples, wrap the base in LoRA and run the SFT loop."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.cache import sha256_file
from assistant.config import Settings
from assistant.errors import UsageError
from data.identity import load_identity
from data.sft import samples_checksum
from training.config import TrainConfig
from training.job_inputs import AdapterJob, JobInputs

if TYPE_CHECKING:  # torch-heavy modules load only when a run starts
    from training.dataset import TokenizedSplit
    from training.sft import TrainOutcome

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
class LoraRun:
    """What a finished training run used and measured (the trained model is handed back beside it)."""

    base: dict[str, str]  # the manifest's keys about the base: base_model, base_checksum, device, kernel, ...
    system: str | None  # the system prompt the samples were formatted with
    fingerprint: str  # identifies the job for --resume
    data_checksum: str
    identity_checksum: str
    train: TokenizedSplit
    val: TokenizedSplit
    pad_id: int
    outcome: TrainOutcome


def resolve_system_prompt(setting: str) -> str | None:
    """'identity' -> the product's identity system prompt, 'none' -> no system turn, else the text itself."""
    if setting == "identity":
        return load_identity().system_prompt()
    if setting.lower() == "none":
        return None
    return setting


def job_fingerprint(config: TrainConfig, data_sum: str, identity_sum: str, base_sum: str, system: str | None) -> str:
    """A hash of everything that shapes the weights: a checkpoint of another job is never resumed."""
    relevant = {k: v for k, v in config.as_dict().items() if k not in _AFTER_TRAINING_KEYS}
    blob = json.dumps([relevant, data_sum, identity_sum, base_sum, system], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_lora(
    job: AdapterJob, settings: Settings, inputs: JobInputs, checkpoints: Path, log: Callable[[str], None]
) -> tuple[Any, LoraRun]:
    """Load the base, tokenize, train LoRA weights (checkpointing into `checkpoints`); the model and the run's facts."""
    from adapters.base_model import load_base
    from training import distributed
    from training.checkpoints import CheckpointStore
    from training.sft import SFTLoop

    cfg = job.config
    system = resolve_system_prompt(cfg.system_prompt)
    # Under torchrun rank 0 loads first: a base converted for the first time is cached once, then read.
    loaded = distributed.main_first(lambda: load_base(settings, progress=job.progress))
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, val = _tokenized_splits(inputs, tokenizer, system, cfg, log)

    # Grounded samples carry their passages: the knowledge entries are part of what was trained on.
    data_sum = samples_checksum(inputs.domain) if inputs.knowledge else sha256_file(Path(job.data_file))
    identity_sum = samples_checksum(inputs.identity)
    fingerprint = job_fingerprint(cfg, data_sum, identity_sum, loaded.checksum, system)
    model = lora_model(loaded, cfg)
    device = loaded.info.device
    loop = SFTLoop(model, train, val, cfg, CheckpointStore(checkpoints), pad_id, device, log, progress=job.progress)
    outcome = loop.run(job.resume, fingerprint)
    state = outcome.state
    log(
        f"trained {state.step} steps in {outcome.train_seconds:.0f} s ({outcome.train_seconds / max(state.step, 1):.2f}"
        f" s/step), {outcome.stopped}; best validation loss {state.best_val:.4f} at step {state.best_step}"
    )
    base = {
        "base_model": loaded.model_id,
        "base_checksum": loaded.checksum,
        "base_display": loaded.info.base_model,
        "quantization": loaded.info.quantization,
        "device": device,
        "kernel": loaded.info.kernel,
    }
    return model, LoraRun(base, system, fingerprint, data_sum, identity_sum, train, val, pad_id, outcome)


def _tokenized_splits(
    inputs: JobInputs, tokenizer: Any, system: str | None, cfg: TrainConfig, log: Callable[[str], None]
) -> tuple[TokenizedSplit, TokenizedSplit]:
    """Split and tokenize the samples, reporting what max_length cut or emptied; refuse when nothing is left."""
    from training.dataset import split_samples, tokenize

    train_samples, val_samples = split_samples(
        [*inputs.domain, *inputs.identity], cfg.val_fraction, cfg.val_max, cfg.seed
    )
    train = tokenize(train_samples, tokenizer, system, cfg.max_length)
    val = tokenize(val_samples, tokenizer, system, cfg.max_length)
    masked = train.masked + val.masked
    if masked:
        # Reported, never silently trained: these samples would contribute no loss at all.
        log(
            f"warning: {len(masked)} sample(s) have no answer token left within max_length={cfg.max_length} "
            f"(system + prompt fill it) and are skipped: {', '.join(masked[:10])}{' ...' if len(masked) > 10 else ''}"
        )
    truncated = train.truncated + val.truncated
    if truncated:
        log(cut_report(truncated, len(train_samples) + len(val_samples), cfg.max_length))
    if not len(train):
        raise UsageError(
            f"no training sample has an answer token within max_length={cfg.max_length}",
            "raise max_length (--max-length) or shorten the prompts",
        )
    lengths = [len(r) for r in train.input_ids]
    log(
        f"tokens per sample: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; "
        f"{train.label_tokens()} labelled tokens in {len(train)} training samples"
    )
    return train, val


def cut_report(truncated: Sequence[str], total: int, max_length: int) -> str:
    """The line about answers cut at max_length: a note for a few, a warning when over 10% are cut."""
    # A few long answers cut is normal; many cut means the model learns half-answers.
    level = "warning" if len(truncated) * 10 > total else "note"
    listed = f"{', '.join(truncated[:5])}{' ...' if len(truncated) > 5 else ''}"
    text = f"{level}: {len(truncated)} of {total} answer(s) cut at max_length={max_length}: {listed}"
    if level == "warning":
        text += " (raise --max-length; the system prompt alone takes part of it)"
    return text


def lora_model(loaded: Any, cfg: TrainConfig) -> Any:
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
