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


@pytest.mark.parametrize("record, paths", [
    ({"effectiveDateTime": "2026-11-30T08:00:00Z"}, ("effective",)),
    ({"effectivePeriod": {"start": "2026-11-01"}, "effectiveDateTime": "2026-10-01"}, ("effective",)),
    ({"effectiveInstant": "bad", "issued": "2026-09-01T00:00:00Z"}, ("effective", "issued")),
    ({"occurrenceTiming": {"event": ["2026-01-02"]}, "authoredOn": "2026-02-03"}, ("occurrence", "authoredOn")),
    ({"recorded": ["2026-03-04", "2026-01-01"]}, ("recorded",)),
    ({"performedPeriod": {"end": "2025-12-31"}}, ("performed",)),
    ({"dosage": {"timing": {"event": ["2026-05-06"]}}}, ("dosage.timing.event",)),
    ({"onsetString": "last spring"}, ("onset",)),
    ({}, ("effective",)),
])
def test_a_record_s_date_is_read_as_the_general_walk_reads_it(record, paths):
    from cds_service.fhirpath import element_values, first_date, parse_date

    walked = next((d for p in paths for v in element_values(record, p) if (d := parse_date(v)) is not None), None)
    assert first_date(record, paths) == walked
