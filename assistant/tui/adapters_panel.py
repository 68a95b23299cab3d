"""The side panel: installed adapters with route, size and training date; picking one forces it."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from assistant.engine import AdapterInfo
from assistant.session import AUTO, BASE
from assistant.tui.format import human_size, short_date


class AdaptersPanel(Vertical):
    """Shows `auto`, each adapter and `base`; ▶ marks the forced mode, ● the adapter of the last answer."""

    class Chosen(Message):
        """The user picked auto, base or an adapter name."""

        def __init__(self, value: str) -> None:
            super().__init__()
            self.value = value

    def compose(self) -> ComposeResult:
        yield Static("Adapters", classes="panel-title")
        yield OptionList(id="adapter-list")
        yield Static("Enter: force · F4: cycle", classes="panel-hint")

    def on_mount(self) -> None:
        self.show([], mode=AUTO, active=None, ready=False)

    def show(self, adapters: Sequence[AdapterInfo], *, mode: str, active: str | None, ready: bool) -> None:
        """Re-draw the list; `active` is the latest answer's adapter ("base" for the base model, None before any)."""
        options = self.query_one(OptionList)
        highlighted = options.highlighted
        options.clear_options()
        if not ready:
            options.add_option(Option(Content.from_markup("[dim]loading…[/]"), disabled=True))
            return
        options.add_option(Option(_entry("auto", "route each question", mode == AUTO, False), id=AUTO))
        for info in adapters:
            detail = f"route {info.route}\n{human_size(info.size_bytes)} · {short_date(info.created)}"
            options.add_option(Option(_entry(info.name, detail, mode == info.name, active == info.name), id=info.name))
        options.add_option(Option(_entry("base", "plain base model", mode == BASE, active == BASE), id=BASE))
        if highlighted is not None and highlighted < options.option_count:
            options.highlighted = highlighted

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Chosen(event.option.id))


def _entry(name: str, detail: str, forced: bool, active: bool) -> Content:
    marker = "▶ " if forced else "  "
    head = Content.from_markup("[b]$marker$name[/b]", marker=marker, name=name)
    if active:
        head += Content.from_markup("  [$success]● active[/]")
    lines = [head] + [Content.styled("  " + line, "dim") for line in detail.splitlines()]
    return Content("\n").join(lines)
