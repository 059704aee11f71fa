"""The scenario harness itself: what makes a scenario fail."""

from __future__ import annotations

import copy

from cds_service import scenarios

from .support.harness import card_problems

SEQ1 = "SEQ-1 fires for a first teclistamab order"


def _answer(live, scenario) -> list[dict]:
    return live.run(scenario, "prefetch")["cards"]


def test_the_cards_a_scenario_expects_pass(live):
    scenario = scenarios.find(scenarios.DEFAULT_FOLDER / "seq-1.yaml", SEQ1)
    cards = _answer(live, scenario)
    assert card_problems(scenario, cards) == []


def test_a_duplicated_card_fails_the_scenario(live):
    scenario = scenarios.find(scenarios.DEFAULT_FOLDER / "seq-1.yaml", SEQ1)
    cards = _answer(live, scenario)
    seq1 = next(c for c in cards if scenarios.card_code(c) == "SEQ-1")
    doubled = cards + [copy.deepcopy(seq1)]
    assert scenarios.check(scenario, doubled).problems == []  # the set of codes alone cannot see it
    [problem] = card_problems(scenario, doubled)
    assert "more than one card for ['SEQ-1']" in problem


def test_a_missing_card_fails_the_scenario(live):
    scenario = scenarios.find(scenarios.DEFAULT_FOLDER / "seq-1.yaml", SEQ1)
    cards = _answer(live, scenario)
    without = [c for c in cards if scenarios.card_code(c) != "SEQ-1"]
    assert any("!= expected" in p for p in card_problems(scenario, without))
