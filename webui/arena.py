"""Blind-mode votes in SQLite and the standings they give (Elo and Bradley-Terry).

No Gradio here: the Compare tab records votes and shows ``leaderboard(...)``.
Both-bad counts as a tie, as in Chatbot Arena's ratings.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import platformdirs

WINNERS = ("a", "b", "tie", "both_bad")
BASE_RATING = 1000.0
SCALE = 400.0  # rating points per factor 10 in odds, as in chess Elo
ELO_K = 32.0
BT_PRIOR = (
    0.5  # virtual wins and losses against an average player; keeps ratings finite
)
BT_ITERATIONS = 200
BT_TOLERANCE = 1e-9

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
    prompt TEXT NOT NULL DEFAULT ''
)
"""


@dataclass(frozen=True)
class Vote:
    """One blind comparison: who played A and B, and which answer the user chose."""

    model_a: str
    model_b: str
    winner: str
    prompt: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class Standing:
    """A contestant's row on the leaderboard.

    Attributes:
        rating: Bradley-Terry strength on the Elo scale (order-independent).
        elo: Online Elo after the votes in order (K = 32).
    """

    model: str
    rating: float
    elo: float
    battles: int
    wins: int
    losses: int
    ties: int


def default_db_path() -> Path:
    """``arena.sqlite3`` in the user data directory (``~/.local/share/silica``)."""
    return Path(platformdirs.user_data_dir("silica")) / "arena.sqlite3"


class ArenaStore:
    """Votes in a SQLite file; one connection per call, so any thread may use it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def record(self, model_a: str, model_b: str, winner: str, prompt: str = "") -> Vote:
        """Store one vote.

        Raises:
            ValueError: ``winner`` is not one of ``WINNERS`` or a model is unnamed.
        """
        if winner not in WINNERS:
            raise ValueError(f"winner must be one of {WINNERS}, got {winner!r}.")
        if not model_a or not model_b:
            raise ValueError("Both contestants need a name.")
        vote = Vote(model_a, model_b, winner, prompt, time.time())
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO votes (created, model_a, model_b, winner, prompt) "
                "VALUES (?, ?, ?, ?, ?)",
                (vote.created, model_a, model_b, winner, prompt),
            )
        return vote

    def votes(self) -> list[Vote]:
        """Every vote, oldest first."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT model_a, model_b, winner, prompt, created "
                "FROM votes ORDER BY id"
            ).fetchall()
        return [Vote(*row) for row in rows]


def score_a(winner: str) -> float:
    """A's score in a vote: 1 for a win, 0 for a loss, 0.5 for a tie or both bad."""
    return {"a": 1.0, "b": 0.0}.get(winner, 0.5)


def elo_ratings(votes: Iterable[Vote], *, k: float = ELO_K) -> dict[str, float]:
    """Online Elo: each vote moves both ratings by ``k`` times the surprise."""
    ratings: dict[str, float] = defaultdict(lambda: BASE_RATING)
    for v in votes:
        ra, rb = ratings[v.model_a], ratings[v.model_b]
        expected_a = 1.0 / (1.0 + 10 ** ((rb - ra) / SCALE))
        delta = k * (score_a(v.winner) - expected_a)
        ratings[v.model_a], ratings[v.model_b] = ra + delta, rb - delta
    return dict(ratings)


def bradley_terry(
    votes: Sequence[Vote], *, prior: float = BT_PRIOR
) -> dict[str, float]:
    """Bradley-Terry strengths by minorization-maximization, on the Elo scale.

    Each contestant also plays ``prior`` wins and losses against a fixed average
    player, so one who never won still gets a finite rating (0 gives the plain
    maximum-likelihood fit). The mean contestant sits at ``BASE_RATING``; 400 points
    mean 10:1 odds.
    """
    wins: dict[str, float] = defaultdict(float)
    games: dict[tuple[str, str], float] = defaultdict(float)
    for v in votes:
        if v.model_a == v.model_b:
            continue
        s = score_a(v.winner)
        wins[v.model_a] += s
        wins[v.model_b] += 1.0 - s
        games[tuple(sorted((v.model_a, v.model_b)))] += 1.0
    players = sorted(wins)
    strength = dict.fromkeys(players, 1.0)
    for _ in range(BT_ITERATIONS):
        updated = {}
        for p in players:
            # The virtual games against the anchor (strength 1) count in both sums.
            denominator = 2 * prior / (strength[p] + 1.0)
            for (a, b), n in games.items():
                if p in (a, b):
                    other = b if p == a else a
                    denominator += n / (strength[p] + strength[other])
            updated[p] = (wins[p] + prior) / denominator
        change = max((abs(updated[p] - strength[p]) for p in players), default=0.0)
        strength = updated
        if change < BT_TOLERANCE:
            break
    if not players:
        return {}
    mean_log = sum(math.log10(s) for s in strength.values()) / len(players)
    return {
        p: BASE_RATING + SCALE * (math.log10(s) - mean_log) for p, s in strength.items()
    }


def leaderboard(votes: Sequence[Vote]) -> list[Standing]:
    """Standings, best first: Bradley-Terry rating, online Elo and the tallies."""
    ratings, elo = bradley_terry(votes), elo_ratings(votes)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for v in votes:
        s = score_a(v.winner)
        for model, score in ((v.model_a, s), (v.model_b, 1.0 - s)):
            row = tally[model]
            row[0] += 1
            row[1 if score == 1 else 2 if score == 0 else 3] += 1
    rows = [
        Standing(
            model,
            round(ratings.get(model, BASE_RATING), 1),
            round(elo.get(model, BASE_RATING), 1),
            *counts,
        )
        for model, counts in tally.items()
    ]
    return sorted(rows, key=lambda r: (-r.rating, -r.elo, r.model))
