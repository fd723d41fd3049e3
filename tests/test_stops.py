"""Stop strings: matched across pieces, never shown, not even in part."""

from __future__ import annotations

import pytest

from engine.stops import StopMatcher


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher, shown = StopMatcher(stops), []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        shown.append(text)
        if stopped:
            return "".join(shown), True
    return "".join(shown) + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (("END",), ["hello ", "E", "N", "D", " more"], ("hello ", True)),
        (("END",), ["hello E", "NDING"], ("hello ", True)),
        (("END",), ["a", "EN", "x"], ("aENx", False)),
        (("\n\n",), ["line\n", "\nnext"], ("line", True)),
        (("。", "!"), ["你好", "世界。再见"], ("你好世界", True)),
        (("ab", "b"), ["xa", "b"], ("x", True)),  # the earliest match wins
        (("stop",), [], ("", False)),
    ],
)
def test_stop_matching(stops, pieces, expected):
    assert run(stops, pieces) == expected


def test_partial_stop_is_held_back_until_decided():
    matcher = StopMatcher(("</s>",))
    assert matcher.push("text</") == ("text", False)
    assert matcher.held == "</"
    assert matcher.push("b>") == ("</b>", False)
    assert matcher.held == ""


def test_no_stops_passes_everything_through():
    matcher = StopMatcher(())
    assert matcher.push("anything") == ("anything", False)
