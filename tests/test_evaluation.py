"""The pure evaluation core: no Flask, no I/O; errors become false and are traced."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cds_service import config, knowledge
from cds_service.data import RequestData
from cds_service.engine import evaluate

NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.timezone.utc)
B = "https://myeloma-cds.example.org/fhir"


def plan_with(tmp_path, actions, variables=()):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    pd = {"resourceType": "PlanDefinition", "id": "probe", "url": f"{B}/PlanDefinition/probe", "status": "active",
          "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/variable",
                         "valueExpression": {"name": n, "language": "text/fhirpath", "expression": e}} for n, e in variables],
          "action": actions}
    (site / "PlanDefinition-probe.json").write_text(json.dumps(pd))
    settings = config.load({"site_dirs": (str(site),)})
    kb = knowledge.load(settings.directories, settings.canonical_base)
    return kb, kb.plans[f"{B}/PlanDefinition/probe"]


def action(code, *conditions, **extra):
    return {"title": f"probe {code}", "code": [{"coding": [{"system": f"{B}/CodeSystem/mm-tcell-recommendations", "code": code}]}],
            "trigger": [{"type": "named-event", "name": "patient-view"}],
            "condition": [{"kind": "applicability", "expression": {"language": "text/fhirpath", "expression": c}} for c in conditions],
            **extra}


def data(**retrieved):
    return RequestData(hook="patient-view", context={"patientId": "p1", "userId": "Practitioner/x"}, patient=None,
                       draft_orders=[], selections=[], retrieved=retrieved, now=NOW)


@pytest.mark.parametrize("explain", [False, True])
def test_an_erroring_or_non_boolean_condition_is_false_and_recorded(tmp_path, explain):
    kb, plan = plan_with(tmp_path, [
        action("SEQ-1", "(1 | 2).single() = 1"),        # errors: not a singleton
        action("SEQ-2", "'yes'"),                      # not a boolean
        action("SEQ-3", "{}"),                         # empty
        action("SEQ-4", "true"),
    ])
    result = evaluate(plan, data(), kb.terminology, explain=explain)
    assert [c.action.code["code"] for c in result.fired] == ["SEQ-4"]
    outcomes = {c.action.code["code"]: c.outcomes[0] for c in result.cards if c.outcomes}
    # a plain true needs no record outside the trace; the odd answers are recorded either way
    assert ("SEQ-4" in outcomes) is explain
    assert outcomes["SEQ-1"].error
    assert "not a boolean" in outcomes["SEQ-2"].error
    assert outcomes["SEQ-3"].value == [] and "counted as false" in outcomes["SEQ-3"].note


def test_variables_are_evaluated_only_when_used_unless_explaining(tmp_path):
    # an evaluation of `unused` would leave its note (a unit that does not convert)
    kb, plan = plan_with(tmp_path, [action("SEQ-1", "%used")],
                         variables=[("used", "true"), ("unused", "(5 'mg').toUnit('mL').empty()")])
    quiet = evaluate(plan, data(), kb.terminology, explain=False)
    assert [c.code for c in quiet.fired] == ["SEQ-1"]
    assert not [n for n in quiet.notes if "not convertible" in n]
    assert quiet.variables == {}  # outside explain no trace records are kept
    explained = evaluate(plan, data(), kb.terminology, explain=True)
    assert explained.variables["unused"].value is True
    assert [n for n in explained.notes if "not convertible" in n]


def test_a_failing_dynamic_value_keeps_the_static_text_and_is_recorded(tmp_path):
    kb, plan = plan_with(tmp_path, [action("SEQ-1", "true", description="static detail",
        dynamicValue=[{"path": "description", "expression": {"language": "text/fhirpath", "expression": "(1 | 2).single().toString()"}}])])
    result = evaluate(plan, data(), kb.terminology)
    card = result.fired[0]
    assert card.description == "static detail"
    assert any("dynamicValue[description]" in o.element and o.error for o in card.outcomes)


def test_action_variables_see_plan_variables(tmp_path):
    kb, plan = plan_with(tmp_path, [action("SEQ-1", "%doubled = 4", extension=[
        {"url": "http://hl7.org/fhir/StructureDefinition/variable",
         "valueExpression": {"name": "doubled", "language": "text/fhirpath", "expression": "%base * 2"}}])],
        variables=[("base", "2")])
    assert [c.action.code["code"] for c in evaluate(plan, data(), kb.terminology).fired] == ["SEQ-1"]
