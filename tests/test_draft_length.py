"""Draft length: expected tokens per unit of cost, acceptance, measured row costs."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from engine import draft_length
from engine.draft_length import (
    Acceptance,
    best_k,
    expected_tokens,
    next_k,
    verify_cost,
)
from engine.loader import load_into

# Roughly the CPU fast path: up to 3 rows cost about one, then products turn
# compute-bound; and a machine where a verify of any size costs one forward.
CPU = (1.0, 1.05, 1.1, 1.4, 1.7, 2.0, 2.3, 2.6)
FLAT = (1.0,) * 8


def test_expected_tokens_of_a_round():
    assert expected_tokens(0.0, 5) == 1.0  # nothing accepted: the target's own token
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_verify_cost_extrapolates_past_the_table():
    assert verify_cost(CPU, 1) == 1.0 and verify_cost(CPU, 8) == 2.6
    assert verify_cost(CPU, 10) == pytest.approx(3.2)


@pytest.mark.parametrize(
    "rate,draft_cost,row_costs,lowest,highest",
    [
        (0.95, 0.0, FLAT, 7, 7),  # free drafts and free rows: draft all allowed
        (0.95, 0.0, CPU, 3, 6),  # lookup on the CPU: rows turn costly, not prohibitive
        (0.87, 0.3, CPU, 2, 3),  # a 0.5B draft for a 1.5B target on the CPU
        (0.3, 0.3, CPU, 1, 1),  # a draft that is mostly wrong: one at a time
        (0.99, 0.05, FLAT, 7, 7),  # a cheap, reliable draft where rows cost nothing
    ],
)
def test_best_k_balances_acceptance_against_cost(
    rate, draft_cost, row_costs, lowest, highest
):
    assert lowest <= best_k(rate, draft_cost, row_costs, 7) <= highest


def test_best_k_stays_within_bounds():
    assert best_k(0.99, 0.0, FLAT, 3) == 3
    assert best_k(0.0, 1.0, CPU, 7) == 1


def test_acceptance_counts_judged_drafts_and_forgets_old_rounds():
    acceptance = Acceptance()
    for _ in range(20):
        acceptance.record(4, 4)  # all accepted: every draft was judged
    assert acceptance.rate > 0.95
    for _ in range(60):
        acceptance.record(4, 1)  # one accepted, then a rejection: 2 judged, not 4
    assert acceptance.rate == pytest.approx(0.5, abs=0.02)
    before = acceptance.rate
    acceptance.record(0, 0)  # a round with no drafts says nothing
    assert acceptance.rate == before


def test_next_k_steps_up_on_full_acceptance_and_down_under_half():
    assert next_k(4, 7, 4, 4) == 5
    assert next_k(7, 7, 7, 7) == 7
    assert next_k(4, 7, 4, 1) == 3
    assert next_k(4, 7, 4, 2) == 4
    assert next_k(4, 0, 4, 4) == 4  # not adaptive


def test_costs_are_measured_once_per_model_and_never_fall(tmp_path, tiny_model_dir):
    models = {}
    target = load_into(models, "target", tiny_model_dir)
    draft = load_into(models, "draft", tiny_model_dir)
    stream = mx.default_stream(mx.default_device())
    costs = draft_length.measured_costs(target, draft, tmp_path, stream)
    rows = costs.row_costs
    assert len(rows) == draft_length.MAX_ROWS and rows[0] == 1.0
    assert all(b >= a for a, b in zip(rows, rows[1:], strict=False))
    assert costs.draft_cost > 0
    (path,) = tmp_path.glob("forward-rows-*.json")
    (seconds,) = json.loads(path.read_text()).values()  # one architecture, one entry
    assert len(seconds) == draft_length.MAX_ROWS and min(seconds) > 0
    again = draft_length.measured_costs(target, None, tmp_path, stream)
    assert again.row_costs == rows and again.draft_cost == 0.0  # read, not measured
