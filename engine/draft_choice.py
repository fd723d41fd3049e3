"""Auto speculation: each round, draft from whichever source has been paying off.

Sources are prompt lookup, the draft model and plain decoding (no drafts). A round's
yield is the tokens it emitted per unit of cost, in target forwards: verifying d drafts
costs a forward of d + 1 rows (``row_costs``, measured per machine by
``engine.draft_length``), and each draft-model forward costs ``draft_cost`` (the
draft's size relative to the target: decoding is bound by reading the weights).
Counting cost instead of timing it keeps the choices, and so seeded sampling,
reproducible. Sources not tried for ``EXPLORE_EVERY`` rounds get tried again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.nn as nn
from mlx.utils import tree_flatten

from engine.draft_length import RowCosts, default_row_costs, verify_cost

EXPLORE_EVERY = 8
SOURCES = ("lookup", "model", "plain")  # the order untried sources are tried in


@dataclass
class SourceChooser:
    """Tokens per cost of each source, as a running average, and when last used."""

    draft_cost: float = 0.0  # one draft-model forward, in target forwards
    row_costs: RowCosts = field(default_factory=default_row_costs)
    rates: dict[str, float] = field(default_factory=dict)
    last_used: dict[str, int] = field(default_factory=dict)
    rounds: int = 0

    def pick(self, available: list[str]) -> str:
        """The source for the next round among ``available``."""
        for source in SOURCES:
            stale = self.rounds - self.last_used.get(source, -EXPLORE_EVERY)
            if source in available and stale >= EXPLORE_EVERY:
                return source
        return max(available, key=lambda s: self.rates.get(s, 0.0))

    def record(self, source: str, emitted: int, drafted: int) -> None:
        """Account a round: ``emitted`` tokens after ``drafted`` drafts."""
        cost = verify_cost(self.row_costs, drafted + 1)
        if source == "model":
            cost += self.draft_cost * drafted
        rate = emitted / cost
        old = self.rates.get(source)
        self.rates[source] = rate if old is None else (old + rate) / 2
        self.last_used[source] = self.rounds
        self.rounds += 1


def size_ratio(draft_model: nn.Module | None, model: nn.Module) -> float:
    """The draft's parameter count over the target's (0 without a draft)."""
    if draft_model is None:
        return 0.0
    draft, target = (
        sum(v.size for _, v in tree_flatten(m.parameters()))
        for m in (draft_model, model)
    )
    return draft / max(target, 1)
