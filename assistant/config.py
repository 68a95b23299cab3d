"""Application settings: frozen dataclasses loaded from a TOML file plus command-line overrides."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.errors import BadInputFile, UsageError

APP_NAME = "yijia-assistant"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: The embedded default models; any Hugging Face id, local folder or .gguf file may replace them.
BUNDLED = "bundled"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def cache_dir() -> Path:
    """Where converted models and fitted routers live (rebuildable, never in the repo)."""
    return _xdg("XDG_CACHE_HOME", ".cache") / APP_NAME


def data_dir() -> Path:
    """Where user data (the conversation database) lives."""
    return _xdg("XDG_DATA_HOME", ".local/share") / APP_NAME


def user_adapters_dir() -> Path:
    """Where `train adapter` installs new adapters by default (user data, never the repository)."""
    return data_dir() / "adapters"


#: The adapters the product ships: a folder that holds only adapters, never code.
SHIPPED_ADAPTERS = REPO_ROOT / "data" / "adapters"


def config_file() -> Path:
    """The default settings file; missing is fine."""
    return _xdg("XDG_CONFIG_HOME", ".config") / APP_NAME / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Every knob of the assistant. Unknown keys in a settings file are rejected."""

    base: str = field(
        default=BUNDLED,
        metadata={"help": "base chat model: 'bundled', a Hugging Face id, a folder or a .gguf file"},
    )
    quantization: str = field(default="4bit", metadata={"help": "'4bit' (NF4, default) or 'bf16'"})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when present), 'cpu' or 'cuda'"})
    encoder: str = field(
        default=BUNDLED,
        metadata={"help": "sentence encoder: 'bundled' (multilingual-e5-small) or a sentence-transformers id/folder"},
    )
    adapter_dirs: tuple[Path, ...] = field(
        default_factory=lambda: (user_adapters_dir(), SHIPPED_ADAPTERS),
        metadata={
            "help": "adapter stores searched in order (a name found earlier wins); "
            "`train adapter` installs into the first"
        },
    )
    routing_data: tuple[Path, ...] = field(
        default=(REPO_ROOT / "data" / "routing",),
        metadata={"help": "labelled routing files or folders the router is fitted on"},
    )
    max_new_tokens: int = field(default=256, metadata={"help": "longest answer, in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (default)"})
    repetition_penalty: float = field(
        default=1.1,
        metadata={"help": "penalise repeated tokens (Qwen's own default); small tuned adapters loop without it"},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "overrides the identity system prompt"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch; default: all cores"})

    def __post_init__(self) -> None:
        if self.quantization not in ("4bit", "bf16"):
            raise UsageError(f"quantization must be '4bit' or 'bf16', not {self.quantization!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"device must be 'auto', 'cpu' or 'cuda', not {self.device!r}")
        if self.max_new_tokens <= 0:
            raise UsageError("max_new_tokens must be positive")
        if self.temperature < 0:
            raise UsageError("temperature must be >= 0")
        if self.repetition_penalty < 1.0:
            raise UsageError("repetition_penalty must be >= 1.0 (1.0 = off)")

    @property
    def adapters_dir(self) -> Path:
        """The store `train adapter` installs into: the first of `adapter_dirs`."""
        return self.adapter_dirs[0]

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given non-None values replaced."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given)


_PATH_FIELDS: set[str] = set()


def load_settings(path: Path | None = None) -> Settings:
    """Read settings from `path` (or the default config file when it exists)."""
    explicit = path is not None
    path = path or config_file()
    if not path.exists():
        if explicit:
            raise UsageError(f"settings file {path} does not exist")
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputFile(str(path), getattr(exc, "lineno", None), f"not valid TOML: {exc}") from None
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BadInputFile(
            str(path), None, f"unknown setting(s): {', '.join(unknown)}", f"known: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = dict(raw)
    for name in _PATH_FIELDS & set(values):
        values[name] = Path(values[name]).expanduser()
    for name in ("routing_data", "adapter_dirs"):
        if name in values:
            values[name] = tuple(Path(p).expanduser() for p in values[name])
    return Settings(**values)
