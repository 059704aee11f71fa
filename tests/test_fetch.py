"""Prefetch and fetch: null, empty, OperationOutcome, missing keys, tokens, paging, faults."""

from __future__ import annotations

import time

import pytest
from werkzeug.wrappers import Response

from cds_service import create_app

from .conftest import NOW
from .support.fhir_server import FhirServer
from .support.requests_ import order_sign

SIGN = "/cds-services/mm-tcell-order-sign"
PATIENT = {"resourceType": "Patient", "id": "p1"}
LOW_IGG = {"resourceType": "Observation", "id": "igg1", "status": "final", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]}, "effectiveDateTime": "2026-06-01",
           "valueQuantity": {"value": 3.2, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}}


@pytest.fixture()
def fhir():
    with FhirServer() as server:
        yield server


@pytest.fixture()
def fetch_app(kb):
    return create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)


def with_server(body: dict, fhir: FhirServer, token: str | None = "test-token") -> dict:
    body["fhirServer"] = fhir.base
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "user/*.read", "subject": "mm-cds"}
    return body


def codes(response) -> set[str]:
    return {c["source"]["topic"]["code"] for c in response.get_json()["cards"]}


def trace(response) -> dict:
    return response.get_json()["extension"]["org.myeloma-cds.explain"]


def test_missing_keys_are_fetched_concurrently_with_the_bearer_token(fetch_app, fhir):
    fhir.reset([PATIENT, LOW_IGG])
    fhir.delay = 0.05
    response = fetch_app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200
    assert "INF-4" in codes(response)
    assert {r.authorization for r in fhir.requests} == {"Bearer test-token"}
    assert fhir.max_in_flight > 1
    assert trace(response)["dataRequirements"]["igg"]["source"] == "fetch"
    # resolved tokens: the patient id and a date, never a raw {{...}}
    assert all("{{" not in r.query and "{{" not in r.path for r in fhir.requests)
    assert any(r.path == "/fhir/Patient/p1" for r in fhir.requests)
    assert any("date=ge2025-06-15" in r.query for r in fhir.requests if r.path == "/fhir/Observation")


def test_prefetched_keys_are_not_fetched_and_null_means_no_data(fetch_app, fhir, client):
    fhir.reset([PATIENT, LOW_IGG])
    keys = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}["mm-tcell-order-sign"]["prefetch"]
    prefetch = {key: None for key in keys}
    prefetch["patient"] = PATIENT
    prefetch["igg"] = {"resourceType": "Bundle", "type": "searchset"}  # empty Bundle: no data
    response = fetch_app.test_client().post(SIGN, json=with_server(order_sign(prefetch=prefetch), fhir))
    assert response.status_code == 200
    assert fhir.requests == []
    assert "INF-4" not in codes(response)  # the EHR said: no IgG


def test_an_operation_outcome_in_place_of_data_is_fetched_again(fetch_app, fhir, client):
    fhir.reset([PATIENT, LOW_IGG])
    keys = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}["mm-tcell-order-sign"]["prefetch"]
    prefetch = {key: None for key in keys}
    prefetch["patient"] = PATIENT
    prefetch["igg"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    response = fetch_app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(prefetch=prefetch), fhir))
    assert response.status_code == 200
    assert [r.path for r in fhir.requests] == ["/fhir/Observation"]
    assert "INF-4" in codes(response)
    assert trace(response)["dataRequirements"]["igg"]["source"] == "fetch"


def test_an_operation_outcome_with_no_server_is_412(client):
    keys = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}["mm-tcell-order-sign"]["prefetch"]
    prefetch = {key: None for key in keys}
    prefetch["patient"] = PATIENT
    prefetch["igg"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    response = client.post(SIGN, json=order_sign(prefetch=prefetch))
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["expression"] == ["igg"]


def test_a_wrong_token_is_412_not_cards_from_missing_data(fetch_app, fhir):
    fhir.reset([PATIENT, LOW_IGG])
    response = fetch_app.test_client().post(SIGN, json=with_server(order_sign(), fhir, token="wrong"))
    assert response.status_code == 412
    assert "HTTP 401" in response.get_json()["issue"][0]["diagnostics"]


def test_a_slow_server_is_answered_412_within_the_timeout(kb, fhir):
    app = create_app({"fetch_timeout": 0.5}, kb=kb, clock=lambda: NOW)
    fhir.reset([PATIENT])
    fhir.delay = 3.0
    started = time.monotonic()
    response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 412
    assert time.monotonic() - started < 2.5
    assert "timed out" in response.get_json()["issue"][0]["diagnostics"]


def test_search_results_are_paged_through_next_links(fetch_app):
    with FhirServer(page_size=2) as fhir:
        older = [dict(LOW_IGG, id=f"old{i}", effectiveDateTime=f"2026-05-0{i + 1}",
                      valueQuantity={"value": 9, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"})
                 for i in range(5)]
        fhir.reset([PATIENT, *older, LOW_IGG])  # the low, newest IgG is on page 3
        response = fetch_app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert response.status_code == 200
        assert "INF-4" in codes(response)
        assert sum(1 for r in fhir.requests if r.path == "/fhir/Observation" and "_offset" in r.query) >= 2


def test_records_of_another_patient_are_dropped(fetch_app, fhir):
    stranger = dict(LOW_IGG, id="x", subject={"reference": "Patient/someone-else"})
    fhir.reset([PATIENT])
    fhir.fault = lambda req: (Response('{"resourceType":"Bundle","type":"searchset","entry":[{"resource":'
                                        + __import__("json").dumps(stranger) + '}]}', content_type="application/fhir+json")
                              if req.path == "/fhir/Observation" and "2465-3" in req.query_string.decode() else None)
    response = fetch_app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert "INF-4" not in codes(response)
    assert trace(response)["dataRequirements"]["igg"]["droppedOtherPatient"] == 1


def test_a_server_error_is_412(fetch_app, fhir):
    fhir.reset([PATIENT])
    fhir.fault = lambda req: Response("boom", status=500) if req.path == "/fhir/Procedure" else None
    response = fetch_app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["expression"] == ["cartProcedures"]
