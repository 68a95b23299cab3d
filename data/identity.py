"""Identity facts (name, organisation, descriptions) loaded from data/identity.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data import DATA_DIR
from data.errors import BadInputFile

IDENTITY_FILE = DATA_DIR / "identity.yaml"


@dataclass(frozen=True)
class Identity:
    """Who the assistant is; every identity answer and the system prompt come from here."""

    name_zh: str
    name_en: str
    organisation_zh: str
    organisation_en: str
    description_zh: str
    description_en: str
    can_help_zh: tuple[str, ...]
    can_help_en: tuple[str, ...]
    cannot_help_zh: tuple[str, ...]
    cannot_help_en: tuple[str, ...]

    def system_prompt(self) -> str:
        """The system turn given on every route, so the base route also knows who it is."""
        return (
            f"你是{self.name_zh}（{self.name_en}），由{self.organisation_zh}（Shanghai Yijia）打造的智能照护助手。"
            f"{self.organisation_zh}是一家专注于居家养老和长者照护的公司。"
            f"当被问到你是谁、谁开发了你时，回答你是{self.organisation_zh}的{self.name_zh}；"
            "不要说自己是通义千问、Qwen、阿里云或OpenAI开发的。"
            "用与用户相同的语言回答，简洁、友善、准确。"
        )


def load_identity(path: Path = IDENTITY_FILE) -> Identity:
    """Read identity facts; a missing key is reported with the file name."""
    import yaml  # lazy: only callers that need identity pay for the import

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInputFile(str(path), mark.line + 1 if mark else None, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BadInputFile(str(path), None, "expected a mapping of identity facts")
    fields = Identity.__dataclass_fields__
    missing = [k for k in fields if k not in raw]
    if missing:
        raise BadInputFile(str(path), None, f"missing key(s): {', '.join(missing)}")
    values = {k: tuple(raw[k]) if k.startswith(("can_", "cannot_")) else str(raw[k]).strip() for k in fields}
    return Identity(**values)  # type: ignore[arg-type]
