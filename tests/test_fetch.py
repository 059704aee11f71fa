"""Prefetch and fetch: null, empty, OperationOutcome, missing keys, tokens, paging, faults.

Fault policy (README, "Robustness"): a prefetch key that cannot be fetched makes the whole
call 412, naming the key and the reason, within fetch_timeout plus a small margin. No
cards from partial data: a missing record can make a rule fire wrongly ("no HBsAg in 12
months"). Faults that leave the data whole (slow but in time, OperationOutcome entries
among the results, many pages, thousands of entries) give the cards.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest
from werkzeug.wrappers import Response

from cds_service import create_app, web

from .conftest import NOW
from .support.cards import member_codes
from .support.fhir_server import FhirServer, bundle, operation_outcome, refused_base
from .support.requests_ import order_sign

SIGN = "/cds-services/mm-tcell-order-sign"
PATIENT = {"resourceType": "Patient", "id": "p1"}
LOW_IGG = {"resourceType": "Observation", "id": "igg1", "status": "final", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]}, "effectiveDateTime": "2026-06-01",
           "valueQuantity": {"value": 3.2, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}}
IGG_LOINC = "2465-3"
FETCH_TIMEOUT = 1.0
MARGIN = 1.0  # thread hand-off, parsing and evaluation, on a loaded CI machine


def _fhir_server():
    with FhirServer() as server:
        yield server


fhir = pytest.fixture(_fhir_server, name="fhir")
other = pytest.fixture(_fhir_server, name="other")  # a second FHIR server: another host to the service


@pytest.fixture()
def fetch_app(kb):
    # One search per key: each fault below hits the keys whose own search it answers. Merged
    # searches, and their faults, are tests/test_merged_searches.py's.
    return create_app({"explain_enabled": True, "fetch_timeout": FETCH_TIMEOUT, "fetch_merge_max_chars": 0},
                      kb=kb, clock=lambda: NOW)


def with_server(body: dict, fhir: FhirServer, token: str | None = "test-token") -> dict:
    body["fhirServer"] = fhir.base
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "user/*.read", "subject": "mm-cds"}
    return body


def codes(response) -> set[str]:
    """The recommendation codes of the answer (a bundled card counts as its members)."""
    return member_codes(response.get_json()["cards"])


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
    # no look-back window at the server (CDS Hooks 2.0 has no date token): applied here
    assert not any("date=" in r.query for r in fhir.requests if r.path == "/fhir/Observation")


def test_with_prefetch_date_tokens_the_fetch_carries_the_window(fhir):
    app = create_app({"fetch_timeout": FETCH_TIMEOUT, "prefetch_date_tokens": True}, clock=lambda: NOW)
    fhir.reset([PATIENT, LOW_IGG])
    response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 200
    assert "INF-4" in codes(response)
    assert any("date=ge2025-06-15" in r.query for r in fhir.requests if r.path == "/fhir/Observation")
    web.state_of(app).feedback.close()


def test_prefetch_broader_than_the_template_gives_the_same_cards(fetch_app, client):
    """An EHR that sends more than asked (older records, a broad search) changes nothing."""
    old_low = dict(LOW_IGG, id="old-low", effectiveDateTime="2024-01-01")  # outside the 12-month window
    keys = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}["mm-tcell-order-sign"]["prefetch"]
    everything = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in (PATIENT, old_low)]}
    broad = {key: everything for key in keys}
    broad["patient"] = PATIENT
    assert "INF-4" not in codes(client.post(SIGN, json=order_sign(prefetch=broad)))  # old IgG: outside the window
    everything["entry"].append({"resource": LOW_IGG})
    assert "INF-4" in codes(client.post(SIGN, json=order_sign(prefetch=broad)))


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
    fhir.fail_on("/fhir/Observation", IGG_LOINC, bundle([stranger]))
    response = fetch_app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert "INF-4" not in codes(response)
    assert trace(response)["dataRequirements"]["igg"]["droppedOtherPatient"] == 1


# -- faults of the FHIR server ------------------------------------------------------------
def fetchable_keys(app, context: dict) -> list[str]:
    """The order-sign prefetch keys whose templates this context can fill (the others,
    e.g. one needing context.encounterId, are not fetched at all)."""
    services = {s["id"]: s for s in app.test_client().get("/cds-services").get_json()["services"]}
    templates = services["mm-tcell-order-sign"]["prefetch"]
    return sorted(key for key, template in templates.items()
                  if all(name in context for name in re.findall(r"\{\{\s*context\.(\w+)\s*\}\}", template)))


Setup = Callable[[FhirServer, FhirServer, list[str]], dict]  # (fhir, other, the service's keys) -> body


def igg_fails(answer: Response) -> Setup:
    def setup(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
        fhir.fail_on("/fhir/Observation", IGG_LOINC, answer)
        return with_server(order_sign(), fhir)
    return setup


def server_sleeps(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
    fhir.delay = FETCH_TIMEOUT * 3
    return with_server(order_sign(), fhir)


def nothing_listens(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
    return dict(with_server(order_sign(), fhir), fhirServer=refused_base())


def wrong_token(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
    return with_server(order_sign(), fhir, token="wrong")


def next_page_elsewhere(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
    other.reset([LOW_IGG])
    return igg_fails(bundle([], next_url=f"{other.base}/Observation?patient=p1&code={IGG_LOINC}"))(fhir, other, keys)


def prefetched_next_page_elsewhere(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
    """An EHR's prefetched Bundle whose next link leaves fhirServer: the token stays home."""
    other.reset([LOW_IGG])
    body = with_server(order_sign(), fhir)
    prefetch = {key: None for key in keys}
    prefetch["patient"] = PATIENT
    prefetch["igg"] = json.loads(bundle([], next_url=f"{other.base}/Observation?page=2").get_data())
    return dict(body, prefetch=prefetch)


def endless_pages(fhir: FhirServer, other: FhirServer, keys: list[str]) -> dict:
    return igg_fails(bundle([], next_url=f"{fhir.base}/Observation?patient=p1&code={IGG_LOINC}&again=1"))(fhir, other, keys)


ALL = ["(every key the service fetches)"]
# every query that holds the IgG code: igg and the pre-treatment tests' preliminary results (D-2)
IGG_KEYS = ["igg", "preliminaryTestResults"]
FAULTS_412 = {
    # name: (setup, keys named in the 412, reason quoted in diagnostics). The reason is the
    # kind of failure only: no address, port or text from the target (issue 10: the 412s
    # of arbitrary fhirServer URLs worked as a port scanner).
    "timeout": (server_sleeps, ALL, "could not be fetched (timeout)"),
    "connection refused": (nothing_listens, ALL, "could not be fetched (connection)"),
    "HTTP 500": (igg_fails(Response("boom", status=500)), IGG_KEYS, "igg: could not be fetched (HTTP error status)"),
    "HTTP 401": (wrong_token, ALL, "could not be fetched (HTTP error status)"),
    "OperationOutcome with 200": (igg_fails(operation_outcome(200)), IGG_KEYS, "answered with an OperationOutcome"),
    "invalid JSON": (igg_fails(Response("{not json", content_type="application/fhir+json")), IGG_KEYS,
                     "the answer is not JSON"),
    "JSON that is not a resource": (igg_fails(Response("[1, 2]", content_type="application/fhir+json")), IGG_KEYS,
                                    "igg: could not be fetched"),
    "next link to another host": (next_page_elsewhere, IGG_KEYS, "outside fhirServer, not followed"),
    "prefetched next link to another host": (prefetched_next_page_elsewhere, ["igg"], "outside fhirServer"),
    "redirect": (igg_fails(Response(status=302, headers={"Location": "http://127.0.0.1:9/x"})), IGG_KEYS,
                 "igg: could not be fetched (HTTP error status)"),
    "endless next links": (endless_pages, IGG_KEYS, "too many pages"),
}
# Never in a 412: what the target said or where it is.
NETWORK_DETAILS = re.compile(r"127\.0\.0\.1|localhost|:\d{2,5}\b|Error\b|refused|HTTP \d{3}|boom")


@pytest.mark.parametrize("name", FAULTS_412)
def test_a_fetch_fault_is_412_naming_the_key_and_reason_within_the_timeout(name, fetch_app, fhir, other):
    setup, keys, reason = FAULTS_412[name]
    service_keys = fetchable_keys(fetch_app, order_sign()["context"])
    assert "igg" in service_keys and "patient" in service_keys
    keys = service_keys if keys is ALL else keys
    fhir.reset([PATIENT, LOW_IGG])
    body = setup(fhir, other, service_keys)
    started = time.monotonic()
    response = fetch_app.test_client().post(SIGN, json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 412, response.get_data(as_text=True)
    issue = response.get_json()["issue"][0]
    assert response.get_json()["resourceType"] == "OperationOutcome" and issue["code"] == "incomplete"
    assert issue["expression"] == keys
    assert reason in issue["diagnostics"]
    assert not NETWORK_DETAILS.search(issue["diagnostics"]), issue["diagnostics"]
    assert elapsed < FETCH_TIMEOUT + MARGIN
    assert other.requests == []  # nothing, least of all the bearer token, went to another host


def test_a_slow_server_within_the_timeout_gives_the_cards(fetch_app, fhir):
    fhir.reset([PATIENT, LOW_IGG])
    fhir.delay = FETCH_TIMEOUT / 4
    started = time.monotonic()
    response = fetch_app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 200
    assert "INF-4" in codes(response)
    assert time.monotonic() - started < FETCH_TIMEOUT + MARGIN


def test_operation_outcome_entries_among_the_results_are_ignored(fetch_app, fhir):
    fhir.reset([PATIENT])
    warning = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "informational"}]}
    fhir.fail_on("/fhir/Observation", IGG_LOINC,
                 bundle([LOW_IGG], extra_entries=[{"resource": warning, "search": {"mode": "outcome"}}]))
    response = fetch_app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200
    assert "INF-4" in codes(response)
    assert trace(response)["dataRequirements"]["igg"]["received"] == 1


def normal_iggs(count: int) -> list[dict]:
    normal = {"value": 9, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}
    return [dict(LOW_IGG, id=f"n{i}", effectiveDateTime=f"2026-05-{1 + i % 28:02d}", valueQuantity=normal)
            for i in range(count)]


def test_thousands_of_entries_over_several_pages_are_processed(fetch_app):
    with FhirServer(page_size=1000) as fhir:
        fhir.reset([PATIENT, *normal_iggs(3000), LOW_IGG])  # the newest, low IgG is on the last page
        response = fetch_app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
        assert response.status_code == 200
        assert "INF-4" in codes(response)
        assert trace(response)["dataRequirements"]["igg"]["received"] == 3001
        # 4 pages of the igg query; the preliminary-results query (D-2) holds the code too and finds none
        assert sum(1 for r in fhir.requests if r.path == "/fhir/Observation" and IGG_LOINC in r.query and "preliminary" not in r.query) == 4


def test_answers_over_the_byte_cap_are_412(kb):
    app = create_app({"fetch_timeout": FETCH_TIMEOUT, "fetch_max_bytes": 200_000}, kb=kb, clock=lambda: NOW)
    with FhirServer(page_size=1000) as fhir:
        fhir.reset([PATIENT, *normal_iggs(1000), LOW_IGG])  # about 300 kB of IgG results
        started = time.monotonic()
        response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert response.status_code == 412
        issue = response.get_json()["issue"][0]
        # The cap is for the whole call: a key still reading when it is spent fails too.
        assert "igg" in issue["expression"]
        assert "igg: could not be fetched (answers over the byte limit, fetch_max_bytes)" in issue["diagnostics"]
        assert time.monotonic() - started < FETCH_TIMEOUT + MARGIN
