"""Retrieve boundaries (tests/cases/retrieve.yaml): what a data requirement keeps of the
records an EHR prefetched, through data.assemble (the package's public entry point) on a
loaded one-requirement site."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from cds_service import data

from .support import tiny_site

TABLE = yaml.safe_load((Path(__file__).parent / "cases" / "retrieve.yaml").read_text())
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
STATUS = {"Observation": "final", "MedicationAdministration": "completed", "Procedure": "completed"}


def record(spec: dict, requirement: dict) -> dict:
    kind = spec.get("type", requirement.get("type", "MedicationAdministration"))
    patient = spec.get("patient", "p1")
    coding = {"system": tiny_site.SYSTEM[kind], "code": spec.get("code", requirement["codes"][0])}
    resource = {"resourceType": kind, "id": spec["id"], "status": spec.get("status", STATUS[kind]),
                "subject": {"reference": patient if "/" in patient else f"Patient/{patient}"}}
    if kind == "MedicationAdministration":
        resource["medicationCodeableConcept"] = {"coding": [coding]}
    else:
        resource["code"] = {"coding": [coding]}
    if "date" in spec:
        resource["performedDateTime" if kind == "Procedure" else "effectiveDateTime"] = spec["date"]
    return resource


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["name"] for c in TABLE["cases"]])
def test_what_a_requirement_keeps(case, tmp_path):
    requirement = {"id": "wanted", **case["requirement"]}
    service = tiny_site.load(tmp_path / "site", [requirement])
    records = [record(r, requirement) for r in case["records"]]
    body = {"hook": "order-sign", "hookInstance": "h-1",
            "context": {"patientId": "p1", "userId": "Practitioner/dr-1",
                        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": []}},
            "prefetch": {"wanted": {"resourceType": "Bundle", "type": "searchset",
                                    "entry": [{"resource": r} for r in records]}}}
    # Everything is prefetched: nothing is fetched, so no transport is needed.
    assembled = data.assemble(service, body, NOW, data.FetchSettings(transport=None, executor=None))
    assert [r["id"] for r in assembled.data.retrieved["wanted"]] == case["expect"]
    assert assembled.reports["wanted"].received == len(records) and assembled.fetches == []


@pytest.mark.parametrize("record, path", [
    ({"code": {"coding": [{"system": "s", "code": "a"}, {"system": "s", "code": "b"}]}}, "code"),
    ({"medicationCodeableConcept": {"coding": [{"system": "r", "code": "1"}]},
      "medicationReference": {"reference": "Medication/x"}}, "medication"),
    ({"status": "active"}, "status"),
    ({"category": [{"coding": [{"code": "x"}]}, {"coding": [{"system": 3, "code": "y"}]}]}, "category"),
    ({"code": "not-a-concept", "codeCodeableConcept": {"coding": [{"code": "c"}]}}, "code"),
    ({"code": {"text": "no codings"}}, "code"),
    ({"code": {"coding": "not a list"}}, "code"),
    ({"vaccineCode": None}, "vaccineCode"),
    ({"valueCodeableConcept": {"coding": [{"system": "s", "code": "pos"}]}}, "value"),
    ({"interpretation": [{"coding": [{"code": "A"}]}]}, "interpretation.coding"),
    ({}, "code"),
])
def test_the_code_index_reads_a_path_as_the_general_walk_does(record, path):
    from cds_service.fhirpath import codings, element_values, path_codings

    assert path_codings(record, path) == [c for v in element_values(record, path) for c in codings(v)]
