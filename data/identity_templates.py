"""Identity paraphrase templates (data/identity_templates.yaml): loading, checking, and the wrapped questions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data import DATA_DIR
from data.errors import BadInputFile
from data.files import read_yaml

TEMPLATES_FILE = DATA_DIR / "identity_templates.yaml"
LANGUAGES = ("zh", "en")


def load_templates(path: Path = TEMPLATES_FILE) -> dict[str, Any]:
    """Read and check the template file (wrappers per language, intents with questions and answers)."""
    raw = read_yaml(path)
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("intents"), dict)
        or not isinstance(raw.get("wrappers"), dict)
    ):
        raise BadInputFile(str(path), None, 'expected top-level "wrappers" and "intents" mappings')
    for lang in LANGUAGES:
        wrappers = raw["wrappers"].get(lang)
        if not wrappers or not all(isinstance(w, str) and "{q}" in w for w in wrappers):
            raise BadInputFile(str(path), None, f"wrappers.{lang} must be a list of strings containing {{q}}")
    for intent, spec in raw["intents"].items():
        for lang in LANGUAGES:
            for key in (f"{lang}_questions", f"{lang}_answers"):
                values = spec.get(key) if isinstance(spec, dict) else None
                if not values or not all(isinstance(v, str) and v.strip() for v in values):
                    raise BadInputFile(str(path), None, f"intent {intent!r}: {key} must be a non-empty list of strings")
    return raw


def wrap_question(wrapper: str, question: str, lang: str) -> str:
    # English questions are written lower-case so they read right after "Hi! "; a bare one
    # starts the sentence and gets a capital.
    if lang == "en" and wrapper.startswith("{q}"):
        question = question[:1].upper() + question[1:]
    return wrapper.replace("{q}", question)


def identity_questions(templates: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """Every (question, intent, language) the templates produce: each question in each wrapper; no repeats."""
    templates = templates or load_templates()
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for intent, spec in templates["intents"].items():
        for lang in LANGUAGES:
            for question in spec[f"{lang}_questions"]:
                for wrapper in templates["wrappers"][lang]:
                    text = wrap_question(wrapper, question.strip(), lang)
                    if text not in seen:
                        seen.add(text)
                        out.append((text, intent, lang))
    return out
