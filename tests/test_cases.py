"""Test cases kept as data (tests/cases/*.yaml), one file per area."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from cds_service import fhirpath, knowledge
from cds_service.fhirpath import Environment, Evaluator, Scope, plain
from cds_service.knowledge import ndc_product

CASES = Path(__file__).parent / "cases"
FP = yaml.safe_load((CASES / "fhirpath.yaml").read_text())
TERM = yaml.safe_load((CASES / "terminology.yaml").read_text())
PRE = yaml.safe_load((CASES / "prefetch.yaml").read_text())
# The added functions' cases: general ones, unit reading (aliases, displays), result reading.
UNITS_AND_RESULTS = [case for name in ("units", "results")
                     for case in yaml.safe_load((CASES / f"{name}.yaml").read_text())["evaluate"]]
EVALUATE = FP["evaluate"] + UNITS_AND_RESULTS
BASE = "https://myeloma-cds.example.org/fhir/ValueSet/"
TODAY = dt.date(2026, 6, 15)


@pytest.mark.parametrize("source", FP["reject"])
def test_strict_parser_refuses(source):
    with pytest.raises(fhirpath.FhirPathSyntaxError):
        fhirpath.parse(source)


@pytest.mark.parametrize("case", FP["accept"], ids=lambda c: c["source"])
def test_strict_parser_accepts(case):
    expr = fhirpath.parse(case["source"])
    assert expr.variables == frozenset(case["variables"])
    assert expr.functions == frozenset(case["functions"])
    assert list(expr.units) == case.get("units", [])
    assert list(expr.value_sets) == case.get("valueSets", [])
    assert expr.compiled is not None


@pytest.mark.parametrize("case", EVALUATE, ids=[c["name"] for c in EVALUATE])
def test_added_functions(case, kb):
    scope = Scope(terminology=kb.terminology, today=TODAY)
    env = Environment({k: v for k, v in case.items() if k not in ("name", "expression", "expect", "note")}, {})
    result = plain(Evaluator(scope, None).run(fhirpath.parse(case["expression"]), env))
    assert result == case["expect"]
    if "note" in case:
        assert any(case["note"] in n for n in scope.notes), scope.notes


@pytest.mark.parametrize("case", UNITS_AND_RESULTS, ids=lambda c: c["name"])
def test_added_functions_answer_the_same_interpreted(case, kb):
    # the unit and result functions, through fhirpathpy's own interpreter (no compiled closures, no speed-ups)
    previous = fhirpath.set_compiled(False)
    fhirpath.uninstall_speedups()
    try:
        test_added_functions(case, kb)
    finally:
        fhirpath.install_speedups()
        fhirpath.set_compiled(previous)


@pytest.mark.parametrize("code, product", TERM["ndc"].items())
def test_ndc_forms(code, product):
    assert ndc_product(code) == product


@pytest.mark.parametrize("case", TERM["membership"], ids=lambda c: f"{c['valueSet']}:{c['code']}")
def test_value_set_membership(case, kb):
    vs = kb.terminology.get(BASE + case["valueSet"])
    assert vs.contains(case["system"], case["code"]) is case["member"]


@pytest.mark.parametrize("case", PRE["resolve"], ids=lambda c: c["template"])
def test_token_resolution(case):
    if case.get("date_tokens"):
        with pytest.raises(knowledge.TemplateError, match="Da Vinci CRD extension"):
            knowledge.check_template(case["template"])  # not CDS Hooks 2.0: refused by default
    knowledge.check_template(case["template"], date_tokens=bool(case.get("date_tokens")))
    context = {"patientId": "p1", "userId": "Practitioner/dr-1"}
    assert knowledge.resolve_template(case["template"], context, TODAY) == case["expect"]


@pytest.mark.parametrize("template", PRE["refuse"])
def test_unsupported_tokens_are_refused(template):
    with pytest.raises(knowledge.TemplateError):
        knowledge.check_template(template, date_tokens=True)
