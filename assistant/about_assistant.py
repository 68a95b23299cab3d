"""Recognises questions about the assistant itself (who are you, who made you) from their embedding.

Why: the general route is the plain base model, and a 0.5B base does not hold an identity from a
system prompt alone (it answers "Are you made by Alibaba?" with "Yes"). A question recognised here
gets an answer that starts in character (the session's answer prefix), on every route.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from assistant.classifier import StoredRouter
from assistant.encoders import Encoder
from assistant.router_fit import load_or_fit_router
from data.labels import Example

SELF = "about-assistant"
OTHER = "other"
#: The routing data labels some questions about the assistant 'general' (the seed has 你是谁 as
#: 0). Such lines are left out of the negatives rather than taught as "not about the assistant".
#: Questions on its memory and abilities are left out too. Requests addressed to the assistant
#: ("你能帮我翻译…", "can you write…") stay negatives.
ABOUT_WORDS = re.compile(
    r"你是|你叫|你的名字|你自己|你属于|你背后|是谁|真人|机器人吗|哪家公司|颐家|yijia|yourself|your name|"
    r"who are you|who made|who built|who created|made you|built you|created you|"
    r"are you (a|an|human|real|chatgpt|qwen|made|built)|"
    # Its memory and what it can answer: near the identity templates' "what can you do", so as
    # negatives they cost the detector identity questions (it missed 4 of 36 probe questions).
    r"你(会不会|能不能)?(忘|记得|记住)|你有记忆|你(能|会)回答|你知道我是谁|我(叫|的名字是)什么|"
    r"have (a )?memory|remember (me|my)|questions can you|can you answer|who i am|my name was|are you free|"
    # What it can do, as users say it to a voice assistant ("小布小布 你会干什么"): the identity templates ask it too.
    r"what can you do|你(会|能)(干|做)什么",
    re.IGNORECASE,
)


def detector_examples(questions: Sequence[str], routing: Sequence[Example]) -> list[Example]:
    """Positives: the identity template questions. Negatives: routing examples not about the assistant."""
    asked = set(questions)
    positives = [Example(q, SELF, "identity templates") for q in questions]
    negatives = [
        Example(e.text, OTHER, e.source) for e in routing if e.text not in asked and not ABOUT_WORDS.search(e.text)
    ]
    return positives + negatives


@dataclass(frozen=True)
class AboutAssistant:
    """A fitted two-class classifier; a question is about the assistant at probability >= threshold."""

    stored: StoredRouter
    threshold: float = 0.5

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Probability that each (unit) vector is a question about the assistant."""
        classifier = self.stored.classifier
        return classifier.predict_proba(vectors)[:, classifier.classes.index(SELF)]

    def flags(self, vectors: np.ndarray) -> list[bool]:
        return [bool(s >= self.threshold) for s in self.scores(vectors)]


def load_or_fit_detector(
    encoder: Encoder,
    routing: Sequence[Example],
    questions: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> AboutAssistant:
    """The detector for this encoder, routing data and template questions; fitted once, then cached."""
    if questions is None:
        from data.identity_templates import identity_questions

        questions = [q for q, _, _ in identity_questions()]
    log = log or (lambda s: print(s, end="", file=sys.stderr, flush=True))
    fitted = load_or_fit_router(encoder, detector_examples(questions, routing), log, what="identity-question detector")
    return AboutAssistant(fitted.stored)
