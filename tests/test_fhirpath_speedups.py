"""The FHIRPath fast path changes nothing: every scenario, every variable and condition,
evaluates to the same values compiled and interpreted, with and without the fhirpathpy
speed-ups, and the same cards come out."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest
import yaml

from cds_service import create_app, fhirpath, web
from cds_service.service import call as call_hook

from .support.ehr import build_prefetch
from .support.fhir_server import FhirStore
from .support.harness import EXAMPLE_SITE, Scenario, load_library

SCENARIOS = Path(__file__).parent / "scenarios"


def _all_scenarios() -> list[Scenario]:
    library = load_library()
    found = []
    for path in sorted(SCENARIOS.glob("[!_]*.yaml")):
        raw = yaml.safe_load(path.read_text())
        found += [Scenario.from_yaml(e, raw.get("defaults") or {}, library) for e in raw["scenarios"]]
    return found


def _stable(response: dict) -> dict:
    """The response without what differs by design between two calls (uuids, times)."""
    out = copy.deepcopy(response)
    for card in out["cards"]:
        card.pop("uuid")
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid")
    trace = out["extension"]["org.myeloma-cds.explain"]
    for report in trace["dataRequirements"].values():
        report.pop("fetchMs", None)
    return out


@pytest.fixture(scope="module")
def state():
    app = create_app({"explain_enabled": True, "site_dirs": (str(EXAMPLE_SITE),)})
    return web.state_of(app)


def _run(state, scenario: Scenario) -> dict:
    service = next(s for s in state.kb.services.values() if s.hook == scenario.hook)
    context = scenario.context()
    body = {"hook": scenario.hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": build_prefetch(service.prefetch, context, FhirStore(scenario.chart), scenario.now.date())}
    return _stable(call_hook(state.kb, service, body, scenario.now, state.fetch, explain=True).response)


@pytest.mark.slow
def test_compiled_and_interpreted_fhirpath_agree_on_every_scenario(state):
    scenarios = _all_scenarios()
    fast = [_run(state, s) for s in scenarios]
    try:
        fhirpath.set_compiled(False)
        fhirpath.uninstall_speedups()
        plain = [_run(state, s) for s in scenarios]
    finally:
        fhirpath.set_compiled(True)
        fhirpath.install_speedups()
    assert len(fast) == len(scenarios) > 150
    for scenario, a, b in zip(scenarios, fast, plain, strict=False):
        assert a == b, f"FHIRPath fast path differs on: {scenario.name}"


def test_errors_are_the_same_compiled_and_interpreted(state):
    from cds_service.fhirpath import (
        Environment,
        EvaluationError,
        Evaluator,
        Scope,
        parse,
    )

    scope = Scope(state.kb.terminology, __import__("datetime").date(2026, 6, 15))
    env = Environment({"x": [1, 2], "s": ["a"]}, {})
    for source in ("%x.single()", "%x + 1", "%undefined.exists()", "%s.toUnit('mg')", "%x.where(frobnicate())",
                   "%x.exists(%x)", "(%x | %s).count()", "%x.first() < 'a'"):
        expression = parse(source)
        outcomes = []
        for compiled in (True, False):
            fhirpath.set_compiled(compiled)
            try:
                outcomes.append(("ok", fhirpath.plain(Evaluator(scope, None).run(expression, env))))
            except EvaluationError as exc:
                outcomes.append(("error", str(exc)))
            finally:
                fhirpath.set_compiled(True)
        assert outcomes[0] == outcomes[1], source
