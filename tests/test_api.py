"""The CDS Hooks 2.0 HTTP contract: discovery, validation errors, 404, 412, CORS, explain."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
import requests

from cds_service import create_app, web

from .conftest import NOW
from .support.cards import card_with, member_codes
from .support.loopback import serving
from .support.requests_ import empty_prefetch, order_sign, teclistamab_order
from .support.sites import oversized_summary_site

SIGN = "/cds-services/mm-tcell-order-sign"


def discovery(client) -> dict:
    return {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}


def full_prefetch(client, service="mm-tcell-order-sign"):
    return empty_prefetch(discovery(client)[service], {"resourceType": "Patient", "id": "p1"})


def diagnostics(response) -> str:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["diagnostics"]


def test_discovery_lists_one_service_per_hook_with_prefetch_templates(client):
    services = discovery(client)
    assert {s["hook"] for s in services.values()} == {"order-select", "order-sign", "patient-view"}
    sign = services["mm-tcell-order-sign"]
    assert sign["title"] and sign["description"]
    assert sign["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert sign["prefetch"]["hcvAntibody"].startswith("Observation?patient={{context.patientId}}&code=http://loinc.org|16128-1")
    # a relative window is not in the template (CDS Hooks 2.0 has no date token): applied here
    assert "date=" not in sign["prefetch"]["hcvAntibody"]
    # medication searches carry no code (the server's code search does not follow
    # medicationReference, and NDC products cannot be token-searched): one search per type,
    # asking for the Medications the records reference in the same answer
    assert sign["prefetch"]["bsabAdministrations"] == \
        "MedicationAdministration?patient={{context.patientId}}&_include=MedicationAdministration:medication"
    # a window over another key's query shares that key: one fetch, not two
    assert "bsabAdministrations" in sign["prefetch"] and "recentBsabAdministrations" not in sign["prefetch"]
    # no codes shipped for immune globulin: nothing to ask the EHR for
    assert "immuneGlobulinAdministrations" not in sign["prefetch"]


# The prefetch tokens CDS Hooks 2.0 defines; anything else a conformant EHR drops (the key is omitted).
TWO_ZERO_TOKEN = re.compile(r"context\.[A-Za-z]\w*|userPractitionerId|userPractitionerRoleId|userPatientId|userRelatedPersonId")


def test_discovery_uses_only_cds_hooks_2_0_prefetch_tokens(client):
    templates = [t for s in discovery(client).values() for t in s.get("prefetch", {}).values()]
    assert templates
    for template in templates:
        assert template.count("{{") == template.count("}}"), template
        for token in re.findall(r"\{\{(.*?)\}\}", template):
            assert TWO_ZERO_TOKEN.fullmatch(token.strip()), f"{token!r} in {template} is not a CDS Hooks 2.0 token"


def test_medication_searches_are_not_filtered_by_code_and_usage_requirements_say_so(client):
    for service in discovery(client).values():
        medication = {k: t for k, t in service.get("prefetch", {}).items() if t.startswith("Medication")}
        assert medication, service["id"]
        assert all("code=" not in t for t in medication.values()), medication
        # each asks for the Medications its records reference, in the same answer
        assert all(t.endswith(f"&_include={t.split('?')[0]}:medication") for t in medication.values()), medication
        assert "not filtered by code at the FHIR server" in service["usageRequirements"]
        assert "_include=<type>:medication" in service["usageRequirements"]
        assert "medicationReference" in service["usageRequirements"]


def test_the_prefetch_date_tokens_setting_switches_crd_date_tokens_on():
    app = create_app({"prefetch_date_tokens": True}, clock=lambda: NOW)
    sign = discovery(app.test_client())["mm-tcell-order-sign"]
    assert "date=ge{{today() - 365 days}}" in sign["prefetch"]["hcvAntibody"]
    web.state_of(app).feedback.close()


def test_a_call_returns_cards_with_the_2_0_fields(client):
    body = order_sign(prefetch=full_prefetch(client))
    response = client.post(SIGN, json=body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert member_codes(cards) == {"SEQ-1", "SCR-1", "SCR-2", "SCR-3", "SCR-4", "INF-1", "INF-2", "ADM-1", "ADM-5", "TOX-3"}  # issue 13: ADM-5, TOX-3 in ADM-SU
    assert sorted(c["source"]["topic"]["code"] for c in cards) == ["ADM-SU", "INF-SC", "SCR", "SEQ-1"]
    assert all(c["extension"]["myeloma-cds.recommendations"] for c in cards)
    uuids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", [])]
    assert len(set(uuids)) == len(uuids)
    seq1 = card_with(cards, "SEQ-1")
    assert seq1["indicator"] == "warning" and len(seq1["summary"]) < 140
    assert seq1["source"]["url"] == "https://doi.org/10.1016/S2352-3026(25)00117-6"
    assert seq1["source"]["topic"]["system"].endswith("/CodeSystem/mm-tcell-recommendations")
    assert {"Not eligible for CAR-T", "Already done elsewhere"} <= {r["display"] for r in seq1["overrideReasons"]}
    assert seq1["selectionBehavior"] == "at-most-one"
    referral = seq1["suggestions"][0]["actions"][0]["resource"]
    assert referral["resourceType"] == "ServiceRequest" and referral["subject"] == {"reference": "Patient/p1"}
    assert referral["requester"] == {"reference": "Practitioner/dr-1"}
    assert referral["instantiatesCanonical"][0].endswith("ActivityDefinition/car-t-referral|1.0.0")
    assert seq1["links"][0]["type"] == "absolute"
    checklist = card_with(cards, "SCR-3")  # SCR-3 is info, SCR-1 warning: the checklist is a warning
    assert checklist["indicator"] == "warning" and "[SCR-3] IGRA: no result in 12 months" in checklist["detail"]
    assert [s["label"] for s in checklist["suggestions"]][-1] == "Order serum IgG (SCR-4)"


def test_a_plan_definition_id_with_the_hook_field_selects_the_service(client):
    body = order_sign(prefetch=full_prefetch(client))
    by_plan = client.post("/cds-services/mm-tcell", json=body)
    assert by_plan.status_code == 200
    by_service = client.post(SIGN, json={**body, "hookInstance": str(uuid.uuid4())})
    def summaries(r):
        return sorted((c["source"]["topic"]["code"], c["summary"]) for c in r.get_json()["cards"])
    assert summaries(by_plan) == summaries(by_service)  # the order-sign service's answer
    assert {"SEQ-1", "SCR", "ADM-SU"} <= {code for code, _ in summaries(by_plan)}


def test_unknown_service_is_404_with_a_json_body(client):
    response = client.post("/cds-services/no-such-service", json=order_sign())
    assert response.status_code == 404
    assert "no CDS service 'no-such-service'" in diagnostics(response)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hook="patient-view"), "hook"),
        (lambda b: b["context"].update(draftOrders={"resourceType": "List"}), "context.draftOrders.resourceType"),
        (lambda b: b["context"].update(userId="nobody"), "context.userId"),
        (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer", "expires_in": 60,
                                               "scope": "x", "subject": "s"}), "fhirServer"),
        (lambda b: b.update(prefetch={"patient": "not a resource"}), "prefetch.patient"),
        (lambda b: b.update(fhirServer="ftp://example.org"), "fhirServer"),
    ],
)
def test_bad_requests_are_400_naming_the_field(client, mutate, field):
    body = order_sign()
    mutate(body)
    response = client.post(SIGN, json=body)
    assert response.status_code == 400
    assert diagnostics(response).startswith(f"{field}:")
    assert response.get_json()["issue"][0]["expression"] == [field]


def test_invalid_json_is_400(client):
    response = client.post(SIGN, data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON at line 1 column 2" in diagnostics(response)


def test_a_selection_missing_from_the_draft_is_400(client):
    body = order_sign()
    body["hook"] = "order-select"
    body["context"]["selections"] = ["MedicationRequest/elsewhere"]
    response = client.post("/cds-services/mm-tcell-order-select", json=body)
    assert response.status_code == 400
    assert "context.selections[0]" in diagnostics(response)


def test_missing_prefetch_and_no_fhir_server_is_412_naming_the_keys(client):
    response = client.post(SIGN, json=order_sign())
    assert response.status_code == 412
    body = response.get_json()
    assert "patient" in body["issue"][0]["expression"] and "hbsagResults" in body["issue"][0]["expression"]
    assert "no fhirServer" in body["issue"][0]["diagnostics"]


def test_an_oversized_body_is_413(kb):
    app = create_app({"max_request_bytes": 2000}, kb=kb, clock=lambda: NOW)
    response = app.test_client().post(SIGN, data=json.dumps(order_sign(prefetch={"x": {"resourceType": "Basic", "text": "y" * 5000}})),
                                      content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"


def chunks(body: bytes, size: int = 700) -> Iterator[bytes]:
    """A generator body: requests sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_chunked_body_over_the_limit_is_413_and_one_under_it_is_read_whole(kb, client):
    limit = 4000
    app = create_app({"max_request_bytes": limit}, kb=kb, clock=lambda: NOW)
    small = json.dumps(order_sign(prefetch=full_prefetch(client))).encode()
    padded = small + b" " * (limit - len(small))  # exactly the limit: still whole, still valid
    assert len(small) < limit
    with serving(app) as base:
        big = requests.post(base + SIGN, data=chunks(padded + b" "), headers={"Content-Type": "application/json"})
        assert big.request.headers.get("Transfer-Encoding") == "chunked"
        assert big.status_code == 413
        assert big.json()["issue"][0]["diagnostics"] == f"request body larger than {limit} bytes"
        whole = requests.post(base + SIGN, data=chunks(padded), headers={"Content-Type": "application/json"})
        assert whole.status_code == 200
        sent_whole = requests.post(base + SIGN, data=padded, headers={"Content-Type": "application/json"})
        assert sent_whole.request.headers["Content-Length"] == str(limit)
        codes = [{c["source"]["topic"]["code"] for c in r.json()["cards"]} for r in (whole, sent_whole)]
        assert codes[0] and codes[0] == codes[1]  # the chunked body was read whole


def test_wrong_method_and_unknown_path_answer_json(client):
    assert client.get(SIGN).status_code == 405
    assert client.get("/nowhere").get_json()["resourceType"] == "OperationOutcome"


def test_cors_preflight_and_simple_requests(client):
    preflight = client.options(SIGN, headers={"Origin": "https://sandbox.cds-hooks.org",
                                              "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    simple = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert simple.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")


def test_explain_is_off_unless_configured(kb):
    app = create_app({}, kb=kb, clock=lambda: NOW)
    client = app.test_client()
    body = order_sign(prefetch=full_prefetch(client))
    response = client.post(SIGN + "?explain=1", json=body, headers={"X-CDS-Explain": "1"})
    assert response.status_code == 200
    assert "extension" not in response.get_json()
    plain = client.post(SIGN, json={**body, "hookInstance": str(uuid.uuid4())})
    def codes(r):
        return sorted(c["source"]["topic"]["code"] for c in r.get_json()["cards"])
    assert codes(response) == codes(plain) and "SEQ-1" in codes(response)  # the cards, only the trace is withheld


def test_explain_trace_shows_variables_conditions_data_and_unknown_codes(client):
    unknown = {"resourceType": "MedicationRequest", "id": "x9", "status": "draft", "intent": "order",
               "medicationCodeableConcept": {"coding": [{"system": "http://example.org/local", "code": "LOCAL-77"}]}}
    prefetch = full_prefetch(client)
    prefetch["igg"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Observation", "id": "igg1", "status": "final", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]}, "effectiveDateTime": "2026-06-01",
        "valueQuantity": {"value": 3, "unit": "mmol/L", "code": "mmol/L", "system": "http://unitsofmeasure.org"}}}]}
    body = order_sign([teclistamab_order(), unknown], prefetch=prefetch)
    response = client.post(SIGN, json=body, headers={"X-CDS-Explain": "true"})
    trace = response.get_json()["extension"]["org.myeloma-cds.explain"]
    assert trace["variables"]["priorCart"]["value"] is False
    assert trace["dataRequirements"]["igg"] == {"source": "prefetch", "received": 1, "count": 1}
    assert trace["dataRequirements"]["recentBsabAdministrations"]["note"] == "narrowed from the data of bsabAdministrations"
    assert "has no codes yet" in trace["dataRequirements"]["immuneGlobulinAdministrations"]["note"]
    inf4 = next(a for a in trace["actions"] if a["code"] == "INF-4")
    assert inf4["fired"] is True  # D-4: an IgG in mmol/L cannot be read, so an info card says so
    assert {c["expression"]: c.get("value") for c in inf4["conditions"]}["%latestIgg.exists()"] is True
    assert card_with(response.get_json()["cards"], "INF-4")["indicator"] == "info"
    assert any("mmol/L" in note and "mg/dL" in note for note in trace["notes"])
    assert {"system": "http://example.org/local", "code": "LOCAL-77", "resourceType": "MedicationRequest",
            "element": "medication", "in": ["draftOrders"]} in trace["unmatchedCodes"]


def test_a_card_the_response_schema_refuses_is_dropped_and_logged(tmp_path, kb, caplog):
    site = oversized_summary_site(tmp_path / "site", kb, "SEQ-1")
    app = create_app({"site_dirs": (str(site),)}, clock=lambda: NOW)
    client = app.test_client()
    response = client.post(SIGN, json=order_sign(prefetch=full_prefetch(client)))
    codes = member_codes(response.get_json()["cards"])
    assert "SEQ-1" not in codes and {"SCR-1", "SCR-3"} <= codes  # SEQ-1 built a 150-character summary
    dropped = [r for r in caplog.records if getattr(r, "event", None) == "card_dropped"]
    assert dropped and dropped[0].code == "SEQ-1"
