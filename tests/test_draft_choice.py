"""Auto speculation's choice of draft source, from tokens per cost."""

from __future__ import annotations

from engine.draft_choice import EXPLORE_EVERY, VERIFY_COST, SourceChooser


def test_untried_sources_go_first_then_the_best_rate_wins():
    chooser = SourceChooser(draft_cost=0.3)
    picks = []
    for emitted, drafted in ((1, 4), (5, 4), (1, 0)):
        picks.append(chooser.pick(["lookup", "model", "plain"]))
        chooser.record(picks[-1], emitted, drafted)
    assert picks == ["lookup", "model", "plain"]
    # lookup: 1 token for 1.6 forwards; model: 5 for 1 + 0.6 + 1.2; plain: 1 for 1.
    assert chooser.rates["lookup"] == 1 / (1 + 4 * VERIFY_COST)
    assert chooser.rates["model"] == 5 / (1 + 4 * VERIFY_COST + 4 * 0.3)
    assert chooser.pick(["lookup", "model", "plain"]) == "model"
    assert chooser.pick(["lookup", "plain"]) == "plain"  # no draft this round


def test_a_neglected_source_is_tried_again():
    chooser = SourceChooser()
    for source, emitted in (("lookup", 1), ("plain", 1)):
        chooser.record(source, emitted, 4 if source == "lookup" else 0)
    picks = []
    for _ in range(EXPLORE_EVERY + 1):
        picks.append(chooser.pick(["lookup", "plain"]))
        chooser.record(picks[-1], 1, 4 if picks[-1] == "lookup" else 0)
    assert picks[0] == "plain" and "lookup" in picks[1:]
    assert picks.count("lookup") == 1


def test_rates_average_recent_rounds():
    chooser = SourceChooser()
    chooser.record("plain", 1, 0)
    chooser.record("plain", 3, 0)
    assert chooser.rates["plain"] == 2.0
