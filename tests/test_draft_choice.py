"""Auto speculation's choice of draft source, from tokens per cost."""

from __future__ import annotations

from engine.draft_choice import EXPLORE_EVERY, SourceChooser


def test_untried_sources_go_first_then_the_best_rate_wins():
    # A verify of 5 rows (4 drafts) costs 1.6 one-row forwards on this "machine".
    chooser = SourceChooser(draft_cost=0.3, row_costs=(1.0, 1.1, 1.2, 1.3, 1.6))
    picks = []
    for emitted, drafted in ((1, 4), (5, 4), (1, 0)):
        picks.append(chooser.pick(["lookup", "model", "plain"]))
        chooser.record(picks[-1], emitted, drafted)
    assert picks == ["lookup", "model", "plain"]
    # lookup: 1 token for 1.6 forwards; model: 5 for 1.6 + 4 * 0.3; plain: 1 for 1.
    assert chooser.rates["lookup"] == 1 / 1.6
    assert chooser.rates["model"] == 5 / (1.6 + 4 * 0.3)
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
