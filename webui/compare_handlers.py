"""The Compare tab's logic: one prompt to 2-4 models or settings, side by side.

The engine runs the answers as one queued task, in turns (``Engine.compare``); this
module only builds the requests, collects the chunks and keeps blind-mode battles.
No Gradio here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd

from engine import CompareStream, Model, ModelPool, Side, moderate
from webui.arena import ArenaStore, leaderboard
from webui.audit import FlagLog
from webui.generation import (
    Throttle,
    describe,
    queue_status,
    speculation_args,
    to_params,
)
from webui.metrics import Result, empty_table, metrics_table
from webui.settings import MAX_SIDES, UISettings

SIDE_NAMES = "ABCD"  # short names for the table and the charts
BLIND_LABELS = ("Model A", "Model B")
VOTES = {
    "a": "A is better",
    "b": "B is better",
    "tie": "Tie",
    "both_bad": "Both are bad",
}
LEADERBOARD_COLUMNS = [
    "rank",
    "model",
    "rating",
    "elo",
    "battles",
    "wins",
    "losses",
    "ties",
]


@dataclass(frozen=True)
class SideControls:
    """One side's settings, in the order of its input components."""

    model: str
    temperature: float
    speculation: str
    draft: str | None = None


@dataclass(frozen=True)
class CompareControls:
    """Settings all sides share."""

    prompt: str
    system: str
    max_tokens: float
    seed: float | None
    sides: int = 2
    interleave: bool = True
    blind: bool = False


@dataclass
class Battle:
    """A blind comparison waiting for (or past) its vote."""

    contestants: tuple[str, str]  # who answered as A and as B
    prompt: str
    voted: bool = False


@dataclass
class CompareSession:
    """One browser tab's Compare state, kept in a ``gr.State``."""

    active: CompareStream | None = None
    battle: Battle | None = None
    results: list[Result] = field(default_factory=list)

    def stop(self) -> bool:
        """Cancel every side; False if nothing runs."""
        stream = self.active
        if stream is None:
            return False
        stream.cancel()
        return True


@dataclass(frozen=True)
class CompareView:
    """What the Compare tab shows; None leaves ``texts`` or ``table`` as they are."""

    texts: list[str] | None
    labels: list[str]
    table: pd.DataFrame | None
    status: str = ""
    voting: bool = False
    warning: str | None = None


def contestant_labels(sides: Sequence[SideControls]) -> list[str]:
    """Names for the sides: the model, plus settings where a model appears twice."""
    labels = []
    for side in sides:
        label = side.model
        if sum(s.model == side.model for s in sides) > 1:
            label += f" · T={side.temperature:g}"
            if side.speculation != "off":
                label += f" · {side.speculation}"
        labels.append(label)
    return [
        label if labels.count(label) == 1 else f"{label} #{i + 1}"
        for i, label in enumerate(labels)
    ]


def _prompt_for(model: Model, system: str, text: str) -> str | list[dict[str, str]]:
    if not model.info.has_chat_template:
        return text
    system = (system or "").strip()
    system_message = [{"role": "system", "content": system}] if system else []
    return [*system_message, {"role": "user", "content": text}]


def _sides(
    pool: ModelPool, controls: CompareControls, sides: Sequence[SideControls]
) -> list[Side]:
    requests = []
    for side in sides:
        params = to_params(
            temperature=side.temperature,
            top_p=1.0,
            top_k=0,
            max_tokens=controls.max_tokens,
            seed=controls.seed,
            stop="",
        )
        model = pool.get_or_load(side.model)
        spec = speculation_args(pool, side.speculation, side.draft)
        prompt = _prompt_for(model, controls.system, controls.prompt)
        requests.append(Side(model, prompt, params, **spec))
    return requests


def _blank(labels: Sequence[str], warning: str) -> CompareView:
    return CompareView([""] * MAX_SIDES, _pad(labels), empty_table(), warning=warning)


def _pad(labels: Sequence[str]) -> list[str]:
    return [*labels, *(f"Side {i + 1}" for i in range(len(labels), MAX_SIDES))]


def run_compare(
    pool: ModelPool,
    session: CompareSession,
    controls: CompareControls,
    sides: Sequence[SideControls],
    *,
    settings: UISettings,
    flags: FlagLog | None = None,
) -> Iterator[CompareView]:
    """Stream every side's answer together; in blind mode hide who is who."""
    count = 2 if controls.blind else max(2, min(int(controls.sides), MAX_SIDES))
    sides = list(sides[:count])
    labels = contestant_labels(sides)
    if not (controls.prompt or "").strip():
        yield _blank(labels, "Type a prompt first.")
        return
    if flags is not None and pool.engine.safety is not None:  # logged even if blocked
        verdict = moderate(controls.prompt, "prompt", pool.engine.safety)
        flags.record("compare", "prompt", controls.prompt, verdict)
    order = list(range(count))
    if controls.blind:
        random.shuffle(order)  # the user picked the models: hide which side is which
    try:
        runs = _sides(pool, controls, [sides[i] for i in order])
        stream = pool.engine.compare(runs, interleave=controls.interleave)
    except Exception as e:  # shown as a warning; the tab keeps working
        yield _blank(labels, describe(e))
        return
    names = [labels[i] for i in order]
    if controls.blind:
        shown = list(BLIND_LABELS)
    else:
        shown = [f"{SIDE_NAMES[i]} · {name}" for i, name in enumerate(names)]
    session.active, session.results = stream, []
    session.battle = (
        Battle((names[0], names[1]), controls.prompt) if controls.blind else None
    )
    yield from _collect(
        pool, session, stream, names=names, shown=shown, settings=settings, flags=flags
    )


def _collect(
    pool: ModelPool,
    session: CompareSession,
    stream: CompareStream,
    *,
    names: list[str],
    shown: list[str],
    settings: UISettings,
    flags: FlagLog | None,
) -> Iterator[CompareView]:
    texts = [""] * MAX_SIDES
    results: list[Result | None] = [None] * len(names)
    throttle, warnings = Throttle(settings.update_interval_s), []
    status = f"{len(names)} answers · {queue_status(pool)}"
    try:
        for side, chunk in stream:
            texts[side] += chunk.text
            if chunk.finish_reason:
                results[side] = Result(
                    SIDE_NAMES[side], names[side], chunk.stats, chunk.finish_reason
                )
                if chunk.error:
                    warnings.append(f"{shown[side]}: {chunk.error}")
                if chunk.finish_reason == "content_filter":
                    warnings.append(f"{shown[side]}: stopped by the safety filter")
                if flags is not None:  # the answer as shown: already screened
                    flags.record(
                        "compare", "response", texts[side], chunk.safety, mask=False
                    )
            if throttle.due():
                yield CompareView(list(texts), _pad(shown), None, status)
    finally:
        stream.cancel()
        session.active = None
    session.results = [r for r in results if r is not None]
    blind = session.battle is not None
    table = _table(session.results, hidden=blind)
    warning = "; ".join(warnings) or None
    yield CompareView(
        list(texts), _pad(shown), table, "done", voting=blind, warning=warning
    )


def _table(results: Sequence[Result], *, hidden: bool) -> pd.DataFrame:
    table = metrics_table(results)
    if hidden:
        table["model"] = "?"
    return table


def vote(store: ArenaStore, session: CompareSession, winner: str) -> CompareView:
    """Record the vote of the pending blind battle and reveal who was who."""
    battle = session.battle
    if battle is None or session.active is not None:
        return CompareView(
            None,
            _pad(BLIND_LABELS),
            _table(session.results, hidden=True),
            warning="Run a blind comparison and wait for both answers.",
        )
    if battle.voted:
        return _revealed(session, "This battle has its vote already.")
    store.record(*battle.contestants, winner, battle.prompt)
    battle.voted = True
    return _revealed(session, None, status=f"Voted: {VOTES[winner]}")


def _revealed(
    session: CompareSession, warning: str | None, status: str = ""
) -> CompareView:
    a, b = session.battle.contestants
    labels = [f"{BLIND_LABELS[0]}: {a}", f"{BLIND_LABELS[1]}: {b}"]
    table = _table(session.results, hidden=False)
    return CompareView(None, _pad(labels), table, status, warning=warning)


def leaderboard_table(store: ArenaStore) -> pd.DataFrame:
    """The arena standings, best first."""
    rows = [
        [rank, s.model, s.rating, s.elo, s.battles, s.wins, s.losses, s.ties]
        for rank, s in enumerate(leaderboard(store.votes()), 1)
    ]
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
