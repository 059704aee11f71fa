"""Result reading is data: a site adds its own result strings and codes in the -site
companions of result-positive, result-negative and result-indeterminate."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from cds_service import config, fhirpath, knowledge
from cds_service.fhirpath import Environment, EvaluationError, Evaluator, Scope, plain

BASE = "https://myeloma-cds.example.org/fhir"
READ = (f"%obs.resultReading('{BASE}/ValueSet/result-positive', '{BASE}/ValueSet/result-negative', "
        f"'{BASE}/ValueSet/result-indeterminate')")


def _read(kb, observation: dict, source: str = READ) -> list:
    scope = Scope(terminology=kb.terminology, today=dt.date(2026, 6, 15))
    env = Environment({"obs": [{"resourceType": "Observation", **observation}]}, {})
    return plain(Evaluator(scope, None).run(fhirpath.parse(source), env))


def _site_with_positive(directory: Path, concepts: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "ValueSet-result-positive-site.json").write_text(json.dumps({
        "resourceType": "ValueSet", "id": "result-positive-site", "url": f"{BASE}/ValueSet/result-positive-site",
        "status": "active", "compose": {"include": concepts},
    }))
    return directory


def test_a_site_adds_its_own_result_string_and_code(kb, tmp_path):
    assert _read(kb, {"valueString": "POS"}) == ["unreadable"]  # not shipped
    site = _site_with_positive(tmp_path / "site", [
        {"system": f"{BASE}/CodeSystem/result-text", "concept": [{"code": "pos"}]},
        {"system": "http://lab.example.org/results", "concept": [{"code": "R"}]},
    ])
    settings = config.load({"site_dirs": (str(site),)})
    site_kb = knowledge.load(settings.directories, settings.canonical_base)
    assert _read(site_kb, {"valueString": " Pos "}) == ["positive"]
    assert _read(site_kb, {"valueCodeableConcept": {"coding": [{"system": "http://lab.example.org/results", "code": "R"}]}}) == ["positive"]
    assert _read(site_kb, {"valueString": "Reactive"}) == ["positive"]  # the shipped strings still count


def test_an_unknown_value_set_is_an_error_not_a_reading(kb):
    with pytest.raises(EvaluationError, match="resultReading: unknown ValueSet"):
        _read(kb, {"valueString": "Reactive"}, READ.replace("result-negative", "no-such-set"))


def test_codes_no_value_set_knows_are_reported_for_the_trace(kb):
    scope = Scope(terminology=kb.terminology, today=dt.date(2026, 6, 15))
    env = Environment({"obs": [{"resourceType": "Observation", "valueCodeableConcept": {
        "coding": [{"system": "http://lab.example.org/results", "code": "WR"}]}}]}, {})
    assert plain(Evaluator(scope, None).run(fhirpath.parse(READ), env)) == ["unreadable"]
    assert ("http://lab.example.org/results", "WR") in scope.unmatched
