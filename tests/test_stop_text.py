"""Stop strings on streamed text, including one split across pieces."""

from __future__ import annotations

from assistant.stop_text import StopText


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    stop = StopText(stops)
    out = "".join(stop.feed(p) for p in pieces) + stop.flush()
    return out, stop.stopped


def test_text_before_a_stop_string_passes_and_the_rest_is_cut() -> None:
    assert run(("END",), ["abc", "dEN", "Dxyz"]) == ("abcd", True)
    assert run(("。",), ["第一句。第二句"]) == ("第一句", True)


def test_a_partial_match_is_held_then_released() -> None:
    stop = StopText(("STOP",))
    assert stop.feed("abST") == "ab"
    assert stop.feed("Ax") == "STAx"
    assert stop.flush() == "" and not stop.stopped
    assert run(("STOP",), ["abST"]) == ("abST", False)


def test_no_stops_is_a_pass_through() -> None:
    assert run((), ["a", "b"]) == ("ab", False)
    assert run(("", "zz"), ["a", "z"]) == ("az", False)
