"""The training recipe: a frozen dataclass loaded from a commented YAML file plus command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.errors import BadInputFile, UsageError
from data.files import read_yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of `train adapter`. Unknown keys in a config file are rejected."""

    # LoRA
    r: int = field(default=8, metadata={"help": "LoRA rank (adapter size grows linearly with it)"})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (update scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    target_modules: str | tuple[str, ...] = field(
        default=ALL_LINEAR, metadata={"help": "'all-linear' (QLoRA paper) or a list of module names"}
    )
    # optimisation
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (linear warm-up, linear decay)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "fraction of the steps spent warming up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training split (may be fractional)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = epochs decide)"})
    batch_size: int = field(default=2, metadata={"help": "samples per forward pass"})
    grad_accumulation: int = field(default=2, metadata={"help": "forward passes per optimizer step"})
    max_length: int = field(
        default=512,
        metadata={"help": "tokens per sample (system ~210 + prompt + answer); longer is cut"},
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade ~30% speed for memory (worth it on small GPUs, not on CPU)"}
    )
    autocast: str = field(
        default="auto",
        metadata={"help": "'auto' (bf16 autocast on CUDA and on CPUs with AVX512-BF16), 'bf16' or 'off' (fp32)"},
    )
    share_system_prefix: bool = field(
        default=True,
        metadata={
            "help": "encode the system prompt every sample shares once per batch, without gradient (~18% faster)"
        },
    )
    seed: int = field(default=42, metadata={"help": "data split, shuffling and LoRA init"})
    # validation, early stopping, checkpoints
    val_fraction: float = field(default=0.1, metadata={"help": "share of the data held out for validation"})
    val_max: int = field(default=64, metadata={"help": "at most this many validation samples (CPU time)"})
    eval_every: int = field(default=20, metadata={"help": "validate every N optimizer steps (and at the end)"})
    patience: int = field(default=3, metadata={"help": "stop after N validations without improvement (0 = never)"})
    min_delta: float = field(default=0.0, metadata={"help": "an improvement must beat the best loss by this much"})
    save_every: int = field(default=20, metadata={"help": "write a resumable checkpoint every N optimizer steps"})
    # data mix
    system_prompt: str = field(
        default="identity",
        metadata={
            "help": "'identity' (the product's system prompt), literal text, or 'none' (the chat template's own "
            "default, which for Qwen is 'You are Qwen, created by Alibaba Cloud': bad for identity)"
        },
    )
    identity: bool = field(default=True, metadata={"help": "mix the identity pairs into the training data"})
    identity_samples: int = field(default=120, metadata={"help": "how many identity pairs to mix in"})
    save_dtype: str = field(
        default="bf16", metadata={"help": "dtype of the saved LoRA weights: 'bf16' (half the size) or 'fp32'"}
    )
    # after training
    probe: bool = field(default=True, metadata={"help": "run the identity probe on the finished adapter"})
    probe_max_new_tokens: int = field(default=48, metadata={"help": "answer length for the identity probe"})
    samples_file: str | None = field(
        default=None, metadata={"help": "JSONL of held-out questions answered by base vs adapter into samples.md"}
    )
    samples_count: int = field(default=5, metadata={"help": "how many held-out questions go into samples.md"})
    samples_max_new_tokens: int = field(default=160, metadata={"help": "answer length in samples.md"})
    repetition_penalty: float = field(
        default=1.1,
        metadata={"help": "greedy decoding penalty for the probe and samples.md (0 = the model's own config)"},
    )

    def __post_init__(self) -> None:
        problems = []
        for name in ("r", "alpha", "batch_size", "grad_accumulation", "max_length", "eval_every", "save_every"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not 0 < self.val_fraction < 1:
            problems.append("val_fraction must be in (0, 1)")
        if self.epochs <= 0 and self.max_steps <= 0:
            problems.append("give epochs > 0 or max_steps > 0")
        if self.learning_rate <= 0:
            problems.append("learning_rate must be positive")
        if self.patience < 0 or self.max_steps < 0 or self.identity_samples < 0:
            problems.append("patience, max_steps and identity_samples must be >= 0")
        if self.save_dtype not in ("bf16", "fp32"):
            problems.append("save_dtype must be 'bf16' or 'fp32'")
        if self.autocast not in ("auto", "bf16", "off"):
            problems.append("autocast must be 'auto', 'bf16' or 'off'")
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            problems.append(f"target_modules must be {ALL_LINEAR!r} or a list of module names")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def target_modules_for_peft(self) -> str | list[str]:
        return self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for the manifest and checkpoints)."""
        out = dataclasses.asdict(self)
        if isinstance(self.target_modules, tuple):
            out["target_modules"] = list(self.target_modules)
        return out

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with the given non-None values replaced (checked like a file)."""
        try:
            return build_config(
                {**self.as_dict(), **{k: v for k, v in overrides.items() if v is not None}}, "overrides"
            )
        except BadInputFile as exc:
            raise UsageError(f"bad training override: {exc.problem}", exc.hint) from None


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Check one value against its field type; YAML gives ints where floats are meant, which is fine."""
    kind = str(kind)
    if name == "target_modules":
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError("a string or a list of strings")
    if "bool" in kind:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("an integer")
    if kind.startswith("float"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError("a number")
    if "None" in kind and value is None:
        return None
    if isinstance(value, str):
        return value
    raise TypeError("a string")


def build_config(raw: dict[str, Any], where: str) -> TrainConfig:
    """A TrainConfig from a plain mapping; unknown keys and wrong types raise BadInputFile naming `where`."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BadInputFile(where, None, f"unknown key(s): {', '.join(unknown)}", f"known: {', '.join(sorted(fields))}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            values[name] = _coerce(name, value, fields[name].type)
        except TypeError as exc:
            raise BadInputFile(where, None, f"{name} must be {exc}, not {value!r}") from None
    try:
        return TrainConfig(**values)
    except ValueError as exc:
        raise BadInputFile(where, None, str(exc)) from None


def load_train_config(path: Path | None = None) -> TrainConfig:
    """Read a recipe YAML (default: training/configs/default.yaml)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadInputFile(str(path), None, "expected a mapping of setting: value")
    return build_config(raw, str(path))


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs, values read as YAML scalars (so 1e-4, true and [a, b] work)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out
