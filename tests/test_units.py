"""Units on the request path: failed conversions are cached (a warm call parses nothing),
aliases are data a site extends, and a site cannot silently redefine a shipped alias."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from cds_service import config, fhirpath, knowledge
from cds_service.errors import KnowledgeError
from cds_service.fhirpath import Environment, Evaluator, Scope, plain

BASE = "https://myeloma-cds.example.org/fhir"
UCUM = "http://unitsofmeasure.org"


def _to_unit(kb, quantity: dict, unit: str) -> list:
    scope = Scope(terminology=kb.terminology, today=dt.date(2026, 6, 15))
    env = Environment({"obs": [{"resourceType": "Observation", "valueQuantity": quantity}]}, {})
    return plain(Evaluator(scope, None).run(fhirpath.parse(f"%obs.value.toUnit('{unit}')"), env))


def _site_map(directory: Path, elements: list[tuple[str, str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ConceptMap-unit-aliases-site.json").write_text(json.dumps({
        "resourceType": "ConceptMap", "id": "unit-aliases-site", "url": f"{BASE}/ConceptMap/unit-aliases-site",
        "status": "active",
        "group": [{"target": UCUM, "element": [
            {"code": source, "target": [{"code": target, "equivalence": "equivalent"}]} for source, target in elements]}],
    }))
    return directory


def _load(site: Path):
    settings = config.load({"site_dirs": (str(site),)})
    return knowledge.load(settings.directories, settings.canonical_base)


def test_a_failing_conversion_is_parsed_once():
    with pytest.raises(fhirpath.UnitError, match="cannot convert 'furlong/fortnight' to 'mg/dL'"):
        fhirpath.conversion_factor("furlong/fortnight", "mg/dL")
    parses = fhirpath.unit_parse_count()
    with pytest.raises(fhirpath.UnitError, match="cannot convert 'furlong/fortnight' to 'mg/dL'"):
        fhirpath.conversion_factor("furlong/fortnight", "mg/dL")
    assert fhirpath.unit_parse_count() == parses


def test_units_that_do_not_convert_are_remembered_as_failures():
    with pytest.raises(fhirpath.UnitError):
        fhirpath.conversion_factor("mmol/L", "kg")  # both parse; they measure different things
    parses = fhirpath.unit_parse_count()
    for _ in range(3):
        with pytest.raises(fhirpath.UnitError):
            fhirpath.conversion_factor("mmol/L", "kg")
    assert fhirpath.unit_parse_count() == parses


def test_an_alias_converts_and_a_warm_call_parses_nothing(kb):
    assert _to_unit(kb, {"value": 1.2, "unit": "K/uL"}, "10*9/L") == [1.2]
    parses = fhirpath.unit_parse_count()
    assert _to_unit(kb, {"value": 0.7, "unit": "K/uL"}, "10*9/L") == [0.7]
    assert fhirpath.unit_parse_count() == parses


def test_without_the_alias_k_per_ul_would_be_kelvin():
    # why the map exists: UCUM reads K as kelvin, so the raw string never converts to a count
    with pytest.raises(fhirpath.UnitError, match="kelvin"):
        fhirpath.conversion_factor("K/uL", "10*9/L")


def test_a_site_adds_its_own_unit_string(tmp_path):
    kb = _load(_site_map(tmp_path / "site", [("x1000/uL", "10*3/uL")]))
    assert _to_unit(kb, {"value": 2.5, "unit": "x1000/uL"}, "10*9/L") == [2.5]
    assert _to_unit(kb, {"value": 2.5, "unit": "K/uL"}, "10*9/L") == [2.5]  # the shipped aliases still apply


def test_a_site_cannot_redefine_a_shipped_alias_in_its_companion(tmp_path):
    with pytest.raises(KnowledgeError) as info:
        _load(_site_map(tmp_path / "site", [("G/L", "g/L")]))
    problem = next(p for p in info.value.problems if p.resource == "ConceptMap/unit-aliases-site")
    assert problem.element == "ConceptMap.group[0].element[0].code"
    assert "'G/L' is already mapped to '10*9/L'" in problem.message


def test_a_companion_that_is_not_loaded_is_named(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shipped = json.loads((Path(__file__).parent.parent / "valuesets" / "ConceptMap-unit-aliases.json").read_text())
    shipped["group"][0]["unmapped"]["url"] = f"{BASE}/ConceptMap/nowhere"
    (site / "ConceptMap-unit-aliases.json").write_text(json.dumps(shipped))
    with pytest.raises(KnowledgeError, match="ConceptMap.group\\[0\\].unmapped.url: ConceptMap '.*/nowhere' is not loaded"):
        _load(site)


def test_case_folding_never_joins_aliases_with_different_targets():
    units = fhirpath.UnitMap({"G/L": "10*9/L", "g/L": "g/L", "K/uL": "10*3/uL"})
    assert units.to_ucum("G/L") == "10*9/L"
    assert units.to_ucum("g/L") == "g/L"
    assert units.to_ucum("g/l") == "g/l"  # ambiguous by case: left to UCUM (gram per litre)
    assert units.to_ucum(" k/ul ") == "10*3/uL"


def test_the_example_site_maps_its_lab_feeds_strings():
    from .support.harness import EXAMPLE_SITE

    kb = _load(EXAMPLE_SITE)
    assert _to_unit(kb, {"value": 1.4, "unit": "K/mcL"}, "10*9/L") == [1.4]
    assert _to_unit(kb, {"value": 600, "unit": "cells/mcL"}, "10*9/L") == [0.6]


def _with_unit_strings(body: dict) -> dict:
    """The example request with an ANC in K/uL and a weight in lbs, as a lab feed sends them."""
    patient = f"Patient/{body['context']['patientId']}"
    records = {"anc": ("751-8", {"value": 0.4, "unit": "K/uL"}), "weights": ("29463-7", {"value": 150, "unit": "lbs"})}
    for key, (code, quantity) in records.items():
        if key in body["prefetch"]:
            body["prefetch"][key]["entry"] = [{"resource": {
                "resourceType": "Observation", "id": f"{key}-1", "status": "final", "subject": {"reference": patient},
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "effectiveDateTime": "2026-06-14T08:00:00Z", "valueQuantity": quantity}}]
    return body


@pytest.mark.parametrize("name", ["order-sign-teclistamab.json", "patient-view.json"])
def test_a_warm_hook_call_parses_no_unit(client, name):
    from .test_examples_requests import EXAMPLES, EXPECTED

    service, _ = EXPECTED[name]
    body = _with_unit_strings(json.loads((EXAMPLES / name).read_text()))
    for _ in range(2):  # the first call may parse a unit this process has not seen
        before = fhirpath.unit_parse_count()
        response = client.post(f"/cds-services/{service}", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert fhirpath.unit_parse_count() == before
