"""Identity training pairs: the facts of data/identity.yaml expanded through many paraphrase templates."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data import DATA_DIR
from data.errors import BadInputFile
from data.identity import Identity, load_identity
from data.sft import SFTSample, sample_from_pair

TEMPLATES_FILE = DATA_DIR / "identity_templates.yaml"
LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class IdentityPair:
    """One generated question/answer pair and where it came from."""

    question: str
    answer: str
    intent: str
    lang: str

    def as_sample(self) -> SFTSample:
        return sample_from_pair(self.question, self.answer, f"identity:{self.intent}:{self.lang}", kind="identity")


_CJK = "\u3000-\u303f\u3400-\u9fff\uff00-\uffef"
# YAML folds a wrapped line into a space; Chinese text has no spaces next to its characters.
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def _join_lines(text: str) -> str:
    return _CJK_SPACE.sub("", " ".join(text.split()))


def fact_values(identity: Identity) -> dict[str, str]:
    """Placeholder values for the templates; lists are joined the way each language writes them."""
    return {
        "name_zh": identity.name_zh,
        "name_en": identity.name_en,
        "organisation_zh": identity.organisation_zh,
        "organisation_en": identity.organisation_en,
        "description_zh": _join_lines(identity.description_zh),
        "description_en": " ".join(identity.description_en.split()),
        "can_help_zh": "；".join(identity.can_help_zh),
        "can_help_en": "; ".join(identity.can_help_en),
        "cannot_help_zh": "；".join(identity.cannot_help_zh),
        "cannot_help_en": "; ".join(identity.cannot_help_en),
    }


def load_templates(path: Path = TEMPLATES_FILE) -> dict[str, Any]:
    """Read and check the template file (wrappers per language, intents with questions and answers)."""
    import yaml  # lazy, like data.identity

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInputFile(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInputFile(str(path), mark.line + 1 if mark else None, f"not valid YAML: {exc}") from None
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


def _wrap(wrapper: str, question: str, lang: str) -> str:
    # English questions are written lower-case so they read right after "Hi! "; a bare one
    # starts the sentence and gets a capital.
    if lang == "en" and wrapper.startswith("{q}"):
        question = question[:1].upper() + question[1:]
    return wrapper.replace("{q}", question)


def expand_identity(identity: Identity | None = None, templates: Mapping[str, Any] | None = None) -> list[IdentityPair]:
    """Every (question x wrapper) of every intent and language, answered from the facts; deterministic order."""
    identity = identity or load_identity()
    templates = templates or load_templates()
    values = fact_values(identity)
    pairs: list[IdentityPair] = []
    seen: set[str] = set()
    for intent, spec in templates["intents"].items():
        for lang in LANGUAGES:
            answers = [a.format(**values).strip() for a in spec[f"{lang}_answers"]]
            n = 0
            for question in spec[f"{lang}_questions"]:
                for wrapper in templates["wrappers"][lang]:
                    text = _wrap(wrapper, question.strip(), lang)
                    if text in seen:
                        continue
                    seen.add(text)
                    # Answers rotate so each wording of a question meets each answer variant.
                    pairs.append(IdentityPair(text, answers[n % len(answers)], intent, lang))
                    n += 1
    return pairs


def sample_identity(pairs: Sequence[IdentityPair], count: int, seed: int = 0) -> list[IdentityPair]:
    """`count` pairs spread evenly over (intent, language) groups, so no intent is left out of a small mix."""
    if count <= 0:
        return []
    if count >= len(pairs):
        return list(pairs)
    groups: dict[tuple[str, str], list[IdentityPair]] = defaultdict(list)
    for pair in pairs:
        groups[(pair.intent, pair.lang)].append(pair)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[IdentityPair] = []
    keys = sorted(groups)
    depth = 0
    while len(chosen) < count:  # round-robin over the groups, one pair each per round
        for key in keys:
            if depth < len(groups[key]) and len(chosen) < count:
                chosen.append(groups[key][depth])
        depth += 1
    return chosen


def identity_samples(count: int, seed: int = 0) -> list[SFTSample]:
    """The identity pairs mixed into adapter training, as samples."""
    return [pair.as_sample() for pair in sample_identity(expand_identity(), count, seed)]
