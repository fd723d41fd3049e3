"""Arena votes: SQLite persistence, Elo and Bradley-Terry ratings."""

from __future__ import annotations

import math
import random
import sqlite3
import threading

import pytest

from webui.arena import (
    BASE_RATING,
    ArenaStore,
    Vote,
    bradley_terry,
    elo_ratings,
    leaderboard,
)


def votes(*triples: tuple[str, str, str]) -> list[Vote]:
    return [Vote(a, b, w) for a, b, w in triples]


def test_elo_moves_by_k_times_the_surprise():
    ratings = elo_ratings(votes(("x", "y", "a")))
    assert ratings == {"x": BASE_RATING + 16, "y": BASE_RATING - 16}
    tie = elo_ratings(votes(("x", "y", "tie")))
    assert tie == {"x": BASE_RATING, "y": BASE_RATING}
    # After x won once, a second win surprises less: a smaller step.
    two = elo_ratings(votes(("x", "y", "a"), ("x", "y", "a")))
    assert 16 < two["x"] - BASE_RATING < 32
    assert math.isclose(sum(two.values()), 2 * BASE_RATING)


def test_bradley_terry_matches_the_closed_form_for_two_players():
    # Without a prior the fit is p_x / p_y = wins_x / wins_y = 3.
    fit = bradley_terry(votes(*[("x", "y", "a")] * 3, ("y", "x", "a")), prior=0.0)
    assert fit["x"] - fit["y"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (fit["x"] + fit["y"]) / 2 == pytest.approx(BASE_RATING)


def test_bradley_terry_orders_a_chain_and_ignores_vote_order():
    chain = votes(*[("a", "b", "a")] * 3, *[("b", "c", "a")] * 3, ("a", "c", "tie"))
    fit = bradley_terry(chain)
    assert fit["a"] > fit["b"] > fit["c"]
    shuffled = chain[:]
    random.Random(0).shuffle(shuffled)
    assert bradley_terry(shuffled) == pytest.approx(fit)


def test_prior_keeps_a_player_who_never_won_finite():
    fit = bradley_terry(votes(*[("w", "l", "a")] * 5))
    assert all(math.isfinite(r) for r in fit.values()) and fit["w"] > fit["l"]


def test_both_bad_counts_as_a_tie():
    assert bradley_terry(votes(("x", "y", "both_bad"))) == pytest.approx(
        bradley_terry(votes(("x", "y", "tie")))
    )


def test_leaderboard_tallies_and_orders():
    board = leaderboard(
        votes(
            ("x", "y", "a"), ("y", "z", "b"), ("x", "z", "tie"), ("x", "y", "both_bad")
        )
    )
    assert board[-1].model == "y"  # lost one, tied one, won none
    x = next(s for s in board if s.model == "x")
    assert (x.battles, x.wins, x.losses, x.ties) == (3, 1, 0, 2)
    assert leaderboard([]) == []


def test_store_persists_votes_across_instances(tmp_path):
    path = tmp_path / "nested" / "arena.sqlite3"
    store = ArenaStore(path)
    store.record("x", "y", "a", prompt="hi")
    store.record("y", "x", "tie")
    again = ArenaStore(path)
    assert [(v.model_a, v.model_b, v.winner, v.prompt) for v in again.votes()] == [
        ("x", "y", "a", "hi"),
        ("y", "x", "tie", ""),
    ]
    assert all(v.created > 0 for v in again.votes())


def test_store_refuses_bad_votes_and_keeps_nothing(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite3")
    with pytest.raises(ValueError, match="winner"):
        store.record("x", "y", "x")
    with pytest.raises(ValueError, match="name"):
        store.record("", "y", "a")
    with sqlite3.connect(store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO votes (created, model_a, model_b, winner) "
            "VALUES (0, 'x', 'y', 'q')"
        )
    assert store.votes() == []


def test_store_takes_votes_from_many_threads(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite3")
    threads = [
        threading.Thread(target=store.record, args=("x", "y", "a")) for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.votes()) == 16
