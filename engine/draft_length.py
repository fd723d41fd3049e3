"""How many tokens to draft: the k with the most expected tokens per unit of cost.

A round drafts k tokens and verifies them in one target forward of k + 1 rows. If
each draft is accepted with probability ``a`` until the first rejection (the usual
model, Leviathan et al. 2023), a round yields ``(1 - a^(k+1)) / (1 - a)`` tokens on
average and costs k draft forwards, a verify and ``ROUND_COST``. What a verify of r
rows costs against one row depends on the machine and the model: on Metal a few rows
cost about one; on the CPU fast path 3 rows of a 1.5B model cost ~1.4 of one and 8
rows ~2.5, as the products turn compute-bound. So both are measured: one forward of
1..MAX_ROWS rows of the target, and one of the draft, once per model on this machine
(~10 s for the Qwen 1.5B/0.5B pair on this CPU; cached by ``engine.machine_table``);
k then follows the acceptance observed so far. Costs, not this run's timings, decide
k: seeded sampling stays reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine import machine_table
from engine.kv_cache import make_prompt_cache, trim_prompt_cache

MAX_ROWS = 9  # rows measured (k up to 8); longer verifies are extrapolated
# Without a measurement: each extra row costs this much of a one-row forward.
DEFAULT_ROW_STEP = 0.15
CONTEXT = list(range(1, 33))  # token ids the forwards are timed after (any vocab)
REPEATS = 2
MEASURE_VERSION = 1
# Acceptance is a running estimate: older rounds count this much less each round.
DECAY = 0.9
# What a round costs besides its forwards, in target forwards: the draft's first
# forward feeds two tokens (the last accepted and the target's own), and each round
# syncs with the device and runs the acceptance in Python. Measured on the Qwen pair
# here: a round of 2 drafts took ~0.15 of a target forward more than its forwards.
ROUND_COST = 0.15

RowCosts = tuple[float, ...]  # cost of a forward of 1, 2, ... rows, in one-row forwards


def default_row_costs() -> RowCosts:
    """Row costs before (or without) a measurement."""
    return tuple(1 + DEFAULT_ROW_STEP * r for r in range(MAX_ROWS))


def verify_cost(row_costs: RowCosts, rows: int) -> float:
    """Cost of a forward of ``rows`` rows, in one-row forwards (extrapolated linearly
    past the table)."""
    if rows <= len(row_costs):
        return row_costs[max(rows, 1) - 1]
    last, step = row_costs[-1], row_costs[-1] - row_costs[-2]
    return last + step * (rows - len(row_costs))


def expected_tokens(rate: float, k: int) -> float:
    """Tokens a round of k drafts yields on average (accepted drafts + one more)."""
    if rate >= 1.0:
        return k + 1.0
    return (1.0 - rate ** (k + 1)) / (1.0 - rate)


def best_k(rate: float, draft_cost: float, row_costs: RowCosts, k_max: int) -> int:
    """The k in 1..k_max with the most expected tokens per unit of cost.

    Args:
        rate: Probability a draft token is accepted (``Acceptance.rate``).
        draft_cost: One draft forward, in target forwards (0 for prompt lookup).
        row_costs: Verify cost by row count (``measured_costs``).
        k_max: The largest k allowed.
    """
    return max(
        range(1, max(k_max, 1) + 1),
        key=lambda k: (
            expected_tokens(rate, k)
            / (verify_cost(row_costs, k + 1) + draft_cost * k + ROUND_COST)
        ),
    )


def next_k(k: int, k_max: int, drafted: int, accepted: int) -> int:
    """A step rule for rows of a batch, whose verify cost depends on the other rows:
    up after a round that accepts all, down when under half (unchanged when
    ``k_max`` is 0: not adaptive)."""
    if k_max and drafted:
        if accepted == drafted:
            return min(k + 1, k_max)
        if 2 * accepted < drafted:
            return max(k - 1, 1)
    return k


@dataclass
class Acceptance:
    """A running estimate of the per-token acceptance probability.

    Counts accepted drafts and the drafts that were judged (accepted ones plus the
    first rejection; drafts after a rejection were never judged), with older rounds
    decaying. Starts from a prior of 0.75 worth four judged drafts.
    """

    accepted: float = 3.0
    judged: float = 4.0

    @property
    def rate(self) -> float:
        return self.accepted / self.judged

    def record(self, drafted: int, accepted: int) -> None:
        """Account a round that drafted ``drafted`` tokens and accepted ``accepted``."""
        if drafted:
            self.accepted = DECAY * self.accepted + accepted
            self.judged = DECAY * self.judged + accepted + (accepted < drafted)


@dataclass(frozen=True)
class DraftCosts:
    """What speculation costs on this machine, in one-row target forwards."""

    row_costs: RowCosts  # a target forward of 1, 2, ... rows
    draft_cost: float = 0.0  # a one-row draft forward (0: no draft model)


def measured_costs(
    target: Any, draft: Any | None, cache_dir: Path, stream: mx.Stream
) -> DraftCosts:
    """Forward costs of ``target`` (and ``draft``), measured once per model.

    Args:
        target, draft: ``LoadedModel``s; each is timed once per machine, MLX and
            BLAS (a forward of 1..MAX_ROWS rows, a few seconds for a 1.5B model on
            a CPU) and the seconds cached by architecture, size and compute format.
        cache_dir: Where the measurements are cached.
        stream: The MLX stream to run the forwards on (the worker's).
    """
    seconds = _forward_seconds(target, cache_dir, stream)
    costs = [s / seconds[0] for s in seconds]
    # A forward never costs less than one of fewer rows (noise can say otherwise).
    row_costs = tuple(max(costs[: r + 1]) for r in range(len(costs)))
    if draft is None:
        return DraftCosts(row_costs)
    draft_seconds = _forward_seconds(draft, cache_dir, stream, drafting=True)
    return DraftCosts(row_costs, draft_seconds[0] / seconds[0])


def _forward_seconds(
    loaded: Any, cache_dir: Path, stream: mx.Stream, drafting: bool = False
) -> list[float]:
    # Keyed by the architecture, not the path: same shapes, same costs.
    info = loaded.info
    model = loaded.drafting() if drafting else loaded.model
    detail = (
        f"{loaded.config.get('model_type')}-{info.parameters}-{info.compute_format}"
        + ("-int8" if model is not loaded.model else "")
    )
    name = f"forward-rows-{MEASURE_VERSION}"
    return machine_table.measured(
        cache_dir,
        name,
        lambda: _time_forwards(model, stream),
        detail=detail,
        valid=lambda v: (
            isinstance(v, list)
            and len(v) == MAX_ROWS
            and all(isinstance(s, float) and s > 0 for s in v)
        ),
    )


def _time_forwards(model: nn.Module, stream: mx.Stream) -> list[float]:
    with mx.stream(stream):
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([CONTEXT]), cache=cache))  # a short context, warm-up
        seconds = []
        for rows in range(1, MAX_ROWS + 1):
            tokens = mx.array([CONTEXT[:rows]])
            best = float("inf")
            for _ in range(REPEATS):
                start = time.perf_counter()
                mx.eval(model(tokens, cache=cache))
                best = min(best, time.perf_counter() - start)
                trim_prompt_cache(cache, rows)
            seconds.append(best)
    return seconds
