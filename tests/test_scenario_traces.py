"""No rule hides an error: across every shipped scenario, no condition, variable or text of
the trace records a FHIRPath error (an error counts as false, so it would silently keep a
card from firing or fall back to its static text)."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service import config, knowledge, scenarios
from cds_service.service import Local


def errors_in(node: Any, found: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        if node.get("error"):
            found.append((str(node.get("element") or node.get("expression")), node["error"]))
        for value in node.values():
            errors_in(value, found)
    elif isinstance(node, list):
        for value in node:
            errors_in(value, found)


@pytest.mark.slow
def test_no_scenario_trace_holds_an_expression_error():
    settings = config.load({})
    sites = tuple(scenarios.folder_site_dirs(scenarios.DEFAULT_FOLDER))  # the example site the scenarios name
    local = Local.open(knowledge.load((*settings.directories, *sites), settings.canonical_base))
    found: list[tuple[str, str]] = []
    runs = 0
    for scenario in scenarios.load_all([scenarios.DEFAULT_FOLDER]):
        for _, answer in local.run(scenario, explain=True):
            trace = answer["extension"]["org.myeloma-cds.explain"]
            errors_in([trace.get("actions", []), trace.get("variables", {})], found)
            runs += 1
    assert runs > 250
    assert found == []
