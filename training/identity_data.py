"""Identity training pairs: the facts of data/identity.yaml expanded through many paraphrase templates."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data.identity import Identity, load_identity
from data.identity_templates import LANGUAGES, identity_questions, load_templates
from data.sft import SFTSample, sample_from_pair


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


def expand_identity(identity: Identity | None = None, templates: Mapping[str, Any] | None = None) -> list[IdentityPair]:
    """Every (question x wrapper) of every intent and language, answered from the facts; deterministic order."""
    identity = identity or load_identity()
    templates = dict(templates or load_templates())
    values = fact_values(identity)
    answers = {
        (intent, lang): [a.format(**values).strip() for a in spec[f"{lang}_answers"]]
        for intent, spec in templates["intents"].items()
        for lang in LANGUAGES
    }
    used: dict[tuple[str, str], int] = defaultdict(int)
    pairs: list[IdentityPair] = []
    for text, intent, lang in identity_questions(templates):
        # Answers rotate so each wording of a question meets each answer variant.
        options = answers[(intent, lang)]
        pairs.append(IdentityPair(text, options[used[(intent, lang)] % len(options)], intent, lang))
        used[(intent, lang)] += 1
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
