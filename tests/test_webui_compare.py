"""Compare tab handlers and blind-mode voting against the tiny random model."""

from __future__ import annotations

import pytest

from webui import compare_handlers as h
from webui.arena import ArenaStore

GREEDY_SIDE = h.SideControls(model="tiny", temperature=0.0, speculation="off")
PROMPT = h.CompareControls(prompt="hello there", system="", max_tokens=10, seed=1)


def run(pool, session, controls, sides, settings) -> list[h.CompareView]:
    return list(h.run_compare(pool, session, controls, sides, settings=settings))


def test_speculation_on_and_off_give_the_same_greedy_text(pool, settings):
    lookup = h.SideControls(model="tiny", temperature=0.0, speculation="lookup")
    views = run(pool, h.CompareSession(), PROMPT, [GREEDY_SIDE, lookup], settings)
    assert len(views) > 2
    last = views[-1]
    assert last.texts[0] and last.texts[0] == last.texts[1]
    assert last.texts[2:] == ["", ""]
    assert last.labels[:2] == ["A · tiny · T=0", "B · tiny · T=0 · lookup"]
    table = last.table
    assert list(table["side"]) == ["A", "B"]
    assert list(table["model"]) == ["tiny · T=0", "tiny · T=0 · lookup"]
    assert table["acceptance"][0] == "" and table["acceptance"][1].endswith("%")
    assert (table["output_tokens"] > 0).all() and (table["tokens_per_s"] >= 0).all()
    assert not last.voting and last.warning is None


def test_more_sides_at_other_temperatures(pool, settings):
    sides = [
        h.SideControls("tiny", t, "off") for t in (0.0, 1.0, 1.5, 0.5)
    ]  # the fourth is unused with sides=3
    controls = h.CompareControls("abc", "", 8, seed=5, sides=3, interleave=False)
    last = run(pool, h.CompareSession(), controls, sides, settings)[-1]
    assert all(last.texts[:3]) and last.texts[3] == ""
    assert len(last.table) == 3
    assert list(last.table["model"]) == ["tiny · T=0", "tiny · T=1", "tiny · T=1.5"]
    assert last.labels[2] == "C · tiny · T=1.5"


def test_blind_mode_hides_names_until_the_vote(pool, settings):
    store = ArenaStore(settings.arena_db)
    session = h.CompareSession()
    warm = h.SideControls("tiny", 1.0, "off")
    controls = h.CompareControls("hello", "", 6, seed=2, blind=True, sides=4)
    last = run(pool, session, controls, [GREEDY_SIDE, warm, warm, warm], settings)[-1]
    assert last.labels[:2] == ["Model A", "Model B"] and last.voting
    assert list(last.table["model"]) == ["?", "?"]
    assert sorted(session.battle.contestants) == ["tiny · T=0", "tiny · T=1"]
    view = h.vote(store, session, "a")
    [vote] = store.votes()
    assert (vote.model_a, vote.model_b) == session.battle.contestants
    assert vote.winner == "a" and vote.prompt == "hello"
    assert view.labels[0].endswith(vote.model_a) and view.labels[1].endswith(
        vote.model_b
    )
    assert not view.voting and "?" not in set(view.table["model"])
    board = h.leaderboard_table(store)
    assert list(board["model"]) == [vote.model_a, vote.model_b]
    assert h.vote(store, session, "b").warning  # one vote per battle
    assert len(store.votes()) == 1


def test_voting_without_a_battle_is_a_warning(settings):
    store = ArenaStore(settings.arena_db)
    assert h.vote(store, h.CompareSession(), "tie").warning
    assert store.votes() == []


@pytest.mark.parametrize(
    ("controls", "side", "message"),
    [
        (PROMPT, h.SideControls("missing-model", 0.0, "off"), "missing-model"),
        (h.CompareControls("  ", "", 8, seed=1), GREEDY_SIDE, "prompt"),
        (PROMPT, h.SideControls("tiny", 0.0, "draft"), "draft model"),
    ],
)
def test_bad_requests_are_warnings(pool, settings, controls, side, message):
    [view] = run(pool, h.CompareSession(), controls, [GREEDY_SIDE, side], settings)
    assert message in view.warning and view.texts == ["", "", "", ""]


def test_stop_cancels_every_side(pool, settings):
    session = h.CompareSession()
    controls = h.CompareControls("go", "", 200, seed=1)
    views = h.run_compare(pool, session, controls, [GREEDY_SIDE] * 2, settings=settings)
    next(views)
    assert session.stop()
    last = list(views)[-1]
    assert list(last.table["finish"]) == ["cancelled", "cancelled"]
    assert (last.table["output_tokens"] < 100).all()
    assert not session.stop()
