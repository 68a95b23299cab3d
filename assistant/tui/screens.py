"""Dialogs over the chat: /why (routing explained), /history (reopen a conversation) and /help."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Markdown, OptionList, Static
from textual.widgets.option_list import Option

from assistant.history import ConversationSummary
from assistant.session import STICKY_CONFIDENCE
from assistant.tui.format import route_score

BAR_WIDTH = 20


class _Dialog(ModalScreen[Any]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def action_close(self) -> None:
        self.dismiss(None)


class WhyScreen(_Dialog):
    """The router's view of one answer: chosen route, every candidate's score, nearest examples."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, question: str, record: dict[str, Any] | None) -> None:
        super().__init__()
        self.question = question
        self.record = record

    def compose(self) -> ComposeResult:
        with Vertical(id="why", classes="dialog") as dialog:
            dialog.border_title = "Why this route?"
            dialog.border_subtitle = "Esc closes"
            with VerticalScroll():
                yield Static(explain(self.question, self.record), id="why-body")


def explain(question: str, record: dict[str, Any] | None) -> Content:
    """The /why text."""
    lines = [Content.from_markup("[b]Question[/b]  $q", q=question)]
    if not record:
        return Content("\n").join([*lines, Content("No routing details were saved for this answer.")])
    adapter = record.get("adapter")
    target = f"adapter {adapter}" if adapter else "base model"
    lines.append(Content.from_markup("[b]Route[/b]     $r → $t", r=str(record.get("route")), t=target))
    confidence, margin = float(record.get("confidence") or 0), float(record.get("margin") or 0)
    if record.get("forced"):
        lines.append(Content("Forced with /adapter or F4: the router's choice of route was not used."))
    else:
        lines.append(Content(f"Confidence {route_score(record):.0%} · margin {margin:.2f}"))
    if record.get("sticky"):
        lines.append(
            Content(
                f"Follow-up: the router preferred '{record.get('predicted')}' at {confidence:.0%}, below the"
                f" {STICKY_CONFIDENCE:.0%} needed to leave the conversation's route, so the previous route was kept."
            )
        )
    if record.get("abstained"):
        lines.append(
            Content(
                f"The router leaned to '{record.get('predicted')}' but was not sure enough,"
                " so the general route answers."
            )
        )
    if record.get("about_assistant"):
        lines.append(Content("A question about the assistant itself: the answer starts in character (颐家小助手)."))
    if record.get("warning"):
        lines.append(Content.from_markup("[$warning]$w[/]", w=str(record["warning"])))
    candidates = record.get("candidates") or []
    if candidates and not record.get("forced"):
        lines += [Content(""), Content.from_markup("[b]Candidates[/b]")]
        width = max(len(str(c["route"])) for c in candidates)
        for c in candidates:
            score = float(c["score"])
            filled = round(score * BAR_WIDTH)
            lines.append(
                Content.assemble(
                    f"  {str(c['route']).ljust(width)}  ",
                    ("█" * filled, "$accent"),
                    ("░" * (BAR_WIDTH - filled), "dim"),
                    f"  {score:.3f}",
                )
            )
    sources = record.get("sources") or []
    if sources:
        lines += [Content(""), Content.from_markup("[b]Knowledge given to the model[/b]")]
        for i, src in enumerate(sources, start=1):
            lines.append(Content.assemble(f"  [{i}] ", (str(src["title"]), "bold"), f"  {float(src['score']):.2f}"))
            lines.append(Content.assemble("      ", (str(src.get("source", "")), "dim")))
            lines.append(Content(f"      {' '.join(str(src.get('text', '')).split())[:240]}"))
    if record.get("withheld"):
        lines.append(
            Content(
                f"The answer guard left out {record['withheld']} sentence(s) naming a medicine, dose, price or phone."
            )
        )
    nearest = record.get("nearest") or []
    if nearest:
        lines += [Content(""), Content.from_markup("[b]Nearest training examples[/b]")]
        width = max(len(str(n["route"])) for n in nearest)
        for n in nearest:
            route = (str(n["route"]).ljust(width), "$secondary")
            lines.append(Content.assemble(f"  {float(n['similarity']):.2f}  ", route, f"  {n['text']}"))
    return Content("\n").join(lines)


class HistoryScreen(_Dialog):
    """Saved conversations, newest first; Enter reopens one (dismisses with its id)."""

    def __init__(self, conversations: Sequence[ConversationSummary], current: int | None) -> None:
        super().__init__()
        self.conversations = list(conversations)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="history", classes="dialog") as dialog:
            dialog.border_title = "History"
            dialog.border_subtitle = "Enter reopens · Esc closes"
            if not self.conversations:
                yield Static("No saved conversations yet.")
                return
            options = [Option(_summary(c, c.id == self.current), id=str(c.id)) for c in self.conversations]
            yield OptionList(*options, id="history-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(int(event.option.id or 0) or None)


def _summary(c: ConversationSummary, current: bool) -> Content:
    title = Content.from_markup("[b]$t[/b]", t=c.title or "(untitled)")
    if current:
        title += Content.from_markup("  [$success]● open[/]")
    detail = Content.styled(f"  {c.updated[:16].replace('T', ' ')} · {c.message_count} messages", "dim")
    return Content("\n").join([title, detail])


class HelpScreen(_Dialog):
    """Commands, keys and the routing rule."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,f1", "close", "Close")]

    def __init__(self, markdown: str) -> None:
        super().__init__()
        self.markdown = markdown

    def compose(self) -> ComposeResult:
        with Vertical(id="help", classes="dialog") as dialog:
            dialog.border_title = "Help"
            dialog.border_subtitle = "Esc closes"
            with VerticalScroll():
                yield Markdown(self.markdown)
