"""Grounded training samples: the question's user turn becomes the knowledge passages plus the question.

The passages are the entries the answer was written from plus distractors drawn from the same
knowledge base, in a shuffled order, laid out by the product's own `context_turn`, so the adapter
learns to use what fits, ignore what does not, and decline what no passage covers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from assistant.answer_policy import context_turn
from assistant.care_rules import language_of
from assistant.knowledge import Passage
from data.errors import BadInputFile
from data.knowledge import KnowledgeEntry
from data.sft import SFTSample


def ground_samples(
    samples: Sequence[SFTSample], entries: Sequence[KnowledgeEntry], passages: int = 2, seed: int = 0
) -> list[SFTSample]:
    """Each grounded sample with its passages in the user turn (at least one distractor); others as they are."""
    by_id = {e.id: e for e in entries}
    rng = random.Random(seed)
    out = []
    for sample in samples:
        if not sample.grounded:
            out.append(sample)
            continue
        unknown = [i for i in sample.context if i not in by_id]
        if unknown:
            file, _, line = sample.source.partition(":")
            raise BadInputFile(file, int(line) if line.isdigit() else None, f"unknown knowledge entry {unknown[0]!r}")
        chosen = [by_id[i] for i in sample.context]
        others = [e for e in entries if e.id not in sample.context]
        want = max(passages, len(chosen) + 1)
        chosen += rng.sample(others, min(len(others), want - len(chosen)))
        rng.shuffle(chosen)
        question = sample.prompt
        lang = language_of(question)
        turn = context_turn(question, [Passage(e, 1.0, lang) for e in chosen], lang)
        messages = tuple((role, turn if role == "user" else text) for role, text in sample.messages)
        out.append(replace(sample, messages=messages))
    return out
