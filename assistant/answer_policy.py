"""Per question: the rules' lead, the knowledge passages the model answers from, and the guard on its words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from assistant.answer_guard import AnswerGuard
from assistant.care_rules import Asks, Lead, classify, language_of, lead_for
from assistant.knowledge import KnowledgeIndex, Passage

if TYPE_CHECKING:  # the detectors' modules import numpy and the fitting code; the policy only calls them
    from assistant.emergency_signs import EmergencySigns
    from assistant.live_data_signs import LiveDataSigns

_NOTHING_FOUND = (
    "知识库里没有与这个问题直接相关的条目，下面只是一般性的建议，具体情况请咨询医生或护士。",
    "The knowledge base has no entry on this question, so what follows is only general guidance; please ask a "
    "doctor or nurse about the specifics.",
)


def context_turn(question: str, passages: Sequence[Passage], lang: str) -> str:
    """The user turn the model sees on a route with knowledge: the passages, how to use them, then the question.

    Training builds its examples with this same function, so the adapter learns exactly this layout.
    """
    if lang == "zh":
        head = "参考资料（上海颐家照护知识库）。只根据参考资料回答；资料里没有的内容就说不知道，并建议咨询医生或护士。"
        blocks = [f"[{i}] {p.title}\n{p.text}" for i, p in enumerate(passages, start=1)]
        body = "\n\n".join(blocks) if blocks else "（没有找到相关资料）"
        return f"{head}\n\n{body}\n\n问题：{question}"
    head = (
        "Reference notes (Shanghai Yijia care knowledge base). Answer only from the notes; if they do not cover "
        "something, say you don't know and suggest asking a doctor or nurse."
    )
    blocks = [f"[{i}] {p.title}\n{p.text}" for i, p in enumerate(passages, start=1)]
    body = "\n\n".join(blocks) if blocks else "(no relevant notes found)"
    return f"{head}\n\n{body}\n\nQuestion: {question}"


@dataclass
class Prepared:
    """How one answer is made: its fixed lead, the user turn the model sees, its sources, its guard."""

    asks: Asks
    lead: Lead | None
    user_turn: str
    passages: tuple[Passage, ...]
    guard: AnswerGuard


class AnswerPolicy:
    """The safety rules on every route, and retrieval on the routes that have a knowledge base.

    `emergency` recognises danger signs by meaning; the emergency regexes stay the floor, so a
    question is an emergency when either says so (without a detector, the regexes alone decide).
    `live` does the same for questions asking for live data, which the rule then answers alone.
    """

    def __init__(
        self,
        drug_names: Sequence[str],
        knowledge: Mapping[str, KnowledgeIndex] | None = None,
        emergency: EmergencySigns | None = None,
        live: LiveDataSigns | None = None,
    ) -> None:
        self._drugs = tuple(drug_names)
        self._knowledge = dict(knowledge or {})
        self._emergency = emergency
        self._live = live

    def routes_with_knowledge(self) -> list[str]:
        return sorted(self._knowledge)

    def prepare(self, question: str, route: str, about_assistant: bool = False) -> Prepared:
        """Apply the rules to `question` on `route`: lead, passages and guard for its answer.

        A question about the assistant itself is answered from the identity, not the knowledge base.
        """
        asks = classify(question)
        if not asks.emergency and self._emergency is not None and self._emergency.flags(question):
            asks = replace(asks, emergency=True, emergency_by_meaning=True)
        if not asks.live and self._live is not None and self._live.flags(question):
            asks = replace(asks, live=True, live_by_meaning=True)
        lead = lead_for(question, asks)
        lang = language_of(question)
        index = self._knowledge.get(route)
        passages: tuple[Passage, ...] = ()
        user_turn = question
        if index is not None and not about_assistant and not (lead and lead.complete):
            passages = tuple(index.search(question, lang))
            user_turn = context_turn(question, passages, lang)
            if not passages:
                note = _NOTHING_FOUND[0 if lang == "zh" else 1]
                lead = Lead(f"{lead.text}{note}\n\n" if lead else f"{note}\n\n")
        allowed = "\n".join(p.text for p in passages)
        return Prepared(asks, lead, user_turn, passages, AnswerGuard(question, self._drugs, allowed))
