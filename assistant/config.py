"""Application settings: frozen dataclasses loaded from a TOML file plus command-line overrides."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
import typing
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
    """Every knob of the assistant. Unknown keys in a settings file are rejected.

    Each field's metadata is the one description of the setting: "help" feeds the command-line help
    and the README; "choices", "above", "at_least" and "non_empty" are the value rules checked on load.
    """

    base: str = field(
        default=BUNDLED,
        metadata={
            "help": "base chat model: 'bundled', a Hugging Face id, a folder or a .gguf file",
            "non_empty": True,
        },
    )
    quantization: str = field(
        default="4bit", metadata={"help": "'4bit' (NF4, default) or 'bf16'", "choices": ("4bit", "bf16")}
    )
    device: str = field(
        default="auto",
        metadata={"help": "'auto' (CUDA when present), 'cpu' or 'cuda'", "choices": ("auto", "cpu", "cuda")},
    )
    encoder: str = field(
        default=BUNDLED,
        metadata={
            "help": "sentence encoder: 'bundled' (multilingual-e5-small) or a sentence-transformers id/folder",
            "non_empty": True,
        },
    )
    adapter_dirs: tuple[Path, ...] = field(
        default_factory=lambda: (user_adapters_dir(), SHIPPED_ADAPTERS),
        metadata={
            "help": "adapter stores searched in order (a name found earlier wins); "
            "`train adapter` installs into the first",
            "non_empty": True,
        },
    )
    routing_data: tuple[Path, ...] = field(
        default=(REPO_ROOT / "data" / "routing",),
        metadata={"help": "labelled routing files or folders the router is fitted on"},
    )
    router_head: str = field(
        default="linear",
        metadata={
            "help": "the route classifier on the embeddings: 'linear' (softmax) or 'mlp' (one hidden layer)",
            "choices": ("linear", "mlp"),
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "longest answer, in tokens", "above": 0})
    max_context: int | None = field(
        default=None,
        metadata={
            "help": "longest prompt + answer, in tokens (a longer conversation keeps its newest part); "
            "default: 2048 on CPU, which prefills in seconds, the model's own length on CUDA",
            "above": 0,
        },
    )
    kv_cache_mb: int = field(
        default=256,
        metadata={
            "help": "memory for the keys/values kept between answers, so a conversation's next turn computes "
            "only its new tokens; 0 = keep none",
            "at_least": 0,
        },
    )
    temperature: float = field(
        default=0.0, metadata={"help": "sampling temperature; 0 = greedy (default)", "at_least": 0}
    )
    repetition_penalty: float = field(
        default=1.1,
        metadata={
            "help": "penalise repeated tokens (1.0 = off; Qwen's own default 1.1); "
            "small tuned adapters loop without it",
            "at_least": 1.0,
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "overrides the identity system prompt"})
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads for torch; default: all cores", "above": 0}
    )
    safety_rules: bool = field(
        default=True,
        metadata={
            "help": "apply the care safety rules, knowledge passages and answer guard on every route "
            "(false = the models answer alone; for measurement only)"
        },
    )
    knowledge_min_score: float = field(
        default=0.83,
        metadata={
            "help": "least similarity (query vs entry) for a knowledge entry to be given to the model; below it "
            "the answer says the knowledge base has nothing on the question"
        },
    )
    knowledge_passages: int = field(
        default=2, metadata={"help": "knowledge entries given to the model per question, at most", "above": 0}
    )
    engine: str = field(
        default="local",
        metadata={
            "help": "'local' (the model in this process) or 'vllm' (an OpenAI-compatible vLLM server)",
            "choices": ("local", "vllm"),
        },
    )
    engine_url: str | None = field(
        default=None,
        metadata={"help": "the vLLM server's URL, e.g. http://127.0.0.1:8011; default: the one `vllm start` ran"},
    )
    engine_api_key: str | None = field(
        default=None,
        metadata={"help": "bearer key for the vLLM server; default: $YIJIA_ENGINE_API_KEY"},
    )
    serve_host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "address `serve` listens on; any other than loopback needs an API key ($YIJIA_API_KEY)",
            "non_empty": True,
        },
    )
    serve_port: int = field(
        default=8000, metadata={"help": "port `serve` listens on (0: any free port)", "at_least": 0}
    )
    serve_queue: int = field(
        default=16,
        metadata={
            "help": "requests `serve` keeps waiting for the model; one more gets 503 + Retry-After",
            "at_least": 0,
        },
    )
    serve_max_body_mb: float = field(
        default=4.0, metadata={"help": "largest request body `serve` reads, in MB (bigger: 413)", "above": 0}
    )
    serve_max_tokens: int = field(
        default=1024, metadata={"help": "most new tokens one `serve` request may ask for (more is clamped)", "above": 0}
    )
    serve_log_questions: bool = field(
        default=False, metadata={"help": "put each question's text in `serve`'s request log (default: never)"}
    )

    def __post_init__(self) -> None:
        # Values from code are checked by the same rules as a settings file, and normalised (str -> Path, int -> float).
        for name in _field_types():
            try:
                object.__setattr__(self, name, checked_setting(name, getattr(self, name)))
            except InvalidSetting as exc:
                raise UsageError(str(exc), f"{name}: {setting_help(name)}") from None

    @property
    def adapters_dir(self) -> Path:
        """The store `train adapter` installs into: the first of `adapter_dirs`."""
        return self.adapter_dirs[0]

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given non-None values replaced (each checked like a settings file's)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given)


class InvalidSetting(ValueError):
    """A setting's value has the wrong type or is out of range; the message names the key."""


@functools.cache
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def setting_help(name: str) -> str:
    """The one help text of setting `name`: the command-line help uses it, a test holds the README to it."""
    return str(_rules(name)["help"])


def _rules(name: str) -> dict[str, Any]:
    return dict(next(f.metadata for f in dataclasses.fields(Settings) if f.name == name))


def _shown(value: Any) -> str:
    """A value as the user wrote it in TOML (true, not True)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def _expected(kind: Any, rules: dict[str, Any]) -> str:
    """What a setting must be, in words: "a whole number > 0", "one of '4bit', 'bf16'"."""
    if rules.get("choices"):
        return "one of " + ", ".join(repr(c) for c in rules["choices"])
    words = {str: "text", int: "a whole number", float: "a number", bool: "true or false", Path: "a path"}
    if typing.get_origin(kind) is tuple:
        text = 'a list of paths, e.g. ["~/models"]'
    else:
        text = words[kind]
    if rules.get("non_empty"):
        text = "non-empty " + text if kind is str else text.replace("a list", "a non-empty list")
    if "above" in rules:
        text += f" > {rules['above']}"
    if "at_least" in rules:
        text += f" >= {rules['at_least']}"
    return text


def _typed(kind: Any, value: Any) -> Any:
    """`value` as `kind`, or a ValueError; bool is not a number, whole numbers are fine as floats."""
    if kind is bool and isinstance(value, bool):
        return value
    if isinstance(value, bool):
        raise ValueError
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is Path and isinstance(value, str | Path):
        return Path(value).expanduser()
    if typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
        return tuple(_typed(Path, item) for item in value)
    raise ValueError


def _check(name: str, value: Any, kind: Any, rules: dict[str, Any]) -> Any:
    """`value` typed and within the rules of setting `name`, else InvalidSetting."""
    optional = type(None) in typing.get_args(kind)
    if optional and value is None:
        return None
    if optional:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    try:
        typed = _typed(kind, value)
    except ValueError:
        typed = None
    ok = typed is not None and (
        ("choices" not in rules or typed in rules["choices"])
        and ("above" not in rules or typed > rules["above"])
        and ("at_least" not in rules or typed >= rules["at_least"])
        and not (rules.get("non_empty") and len(typed) == 0)
    )
    if not ok:
        raise InvalidSetting(f"setting {name!r} must be {_expected(kind, rules)}, not {_shown(value)}")
    return typed


def checked_setting(name: str, value: Any) -> Any:
    """`value` for setting `name`, typed (str -> Path, int -> float) and range-checked, else InvalidSetting."""
    return _check(name, value, _field_types()[name], _rules(name))


#: The key older settings files used for the one adapter store; it means `adapter_dirs = [DIR]`.
LEGACY_ADAPTERS_DIR = "adapters_dir"


def _line_of(text: str, key: str) -> int | None:
    """The 1-based line where `key = ...` is written, when it can be found cheaply."""
    key = re.escape(key)
    match = re.search(rf"""^\s*(?:{key}|"{key}"|'{key}')\s*=""", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def load_settings(path: Path | None = None) -> Settings:
    """Read settings from `path` (or the default config file when it exists); a bad key or value names the line."""
    explicit = path is not None
    path = path or config_file()
    if not path.exists():
        if explicit:
            raise UsageError(f"settings file {path} does not exist")
        return Settings()
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        line = re.search(r"at line (\d+)", str(exc))
        raise BadInputFile(str(path), int(line[1]) if line else None, f"not valid TOML: {exc}") from None
    known = set(_field_types())
    unknown = sorted(set(raw) - known - {LEGACY_ADAPTERS_DIR})
    if unknown:
        raise BadInputFile(
            str(path),
            _line_of(text, unknown[0]),
            f"unknown setting(s): {', '.join(unknown)}",
            f"known: {', '.join(sorted(known))}",
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            if name == LEGACY_ADAPTERS_DIR:
                if "adapter_dirs" in raw:
                    raise InvalidSetting(f"give {LEGACY_ADAPTERS_DIR!r} (one store) or 'adapter_dirs', not both")
                values["adapter_dirs"] = (_check(name, value, Path, {}),)
            else:
                values[name] = checked_setting(name, value)
        except InvalidSetting as exc:
            hint = f"{name}: {setting_help('adapter_dirs' if name == LEGACY_ADAPTERS_DIR else name)}"
            raise BadInputFile(str(path), _line_of(text, name), str(exc), hint) from None
    return Settings(**values)
