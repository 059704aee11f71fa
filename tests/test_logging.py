"""One structured log line per request, and never patient data in it: through Flask, and
through gunicorn (its own lines too), where every line on stdout and stderr is JSON."""

from __future__ import annotations

import io
import json

import pytest
import requests

from cds_service import create_app, ops

from .conftest import NOW
from .support.fhir_server import refused_base
from .support.gunicorn import CLI, Gunicorn
from .support.requests_ import empty_prefetch, order_sign, teclistamab_order

SECRET_ID = "pat-7731-secret"
SECRET_NAME = "Zebedee"
SECRETS = (SECRET_ID, SECRET_NAME, "Quentin", "MRN-99812")


def secret_patient() -> dict:
    return {"resourceType": "Patient", "id": SECRET_ID, "name": [{"family": SECRET_NAME, "given": ["Quentin"]}],
            "identifier": [{"system": "urn:mrn", "value": "MRN-99812"}]}


def test_request_log_has_the_request_facts_and_no_patient_data(kb):
    app = create_app({"explain_enabled": True}, kb=kb, clock=lambda: NOW)
    stream = io.StringIO()
    ops.configure_logging("INFO", stream)
    client = app.test_client()
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    prefetch = empty_prefetch(services["mm-tcell-order-sign"], secret_patient())
    body = order_sign([teclistamab_order(patient=SECRET_ID)], patient=SECRET_ID, prefetch=prefetch)
    assert client.post("/cds-services/mm-tcell-order-sign?explain=1", json=body).status_code == 200
    bad = dict(body, context=dict(body["context"], userId="Zebedee"))
    assert client.post("/cds-services/mm-tcell-order-sign", json=bad).status_code == 400
    ops.configure_logging("INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    calls = [line for line in lines if line.get("event") == "request" and line["method"] == "POST"]
    assert len(calls) == 2
    ok = calls[0]
    assert ok["service"] == "mm-tcell-order-sign" and ok["hook"] == "order-sign" and ok["status"] == 200
    assert ok["hook_instance"] == body["hookInstance"] and isinstance(ok["ms"], float)
    assert {"SEQ-1", "SCR-1", "SCR-3", "ADM-1"} <= set(ok["codes"])
    assert calls[1]["status"] == 400 and calls[1]["error_field"] == "context.userId"
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.gunicorn
def test_gunicorn_logs_are_json_lines_without_patient_data(tmp_path):
    server = Gunicorn(tmp_path, CLI, workers="2", fetch_timeout="1")  # mm-cds serve --prod
    try:
        server.wait_ready()
        base, sign = server.base, "/cds-services/mm-tcell-order-sign"
        services = {s["id"]: s for s in requests.get(base + "/cds-services", timeout=10).json()["services"]}
        body = order_sign([teclistamab_order(patient=SECRET_ID)], patient=SECRET_ID,
                          prefetch=empty_prefetch(services["mm-tcell-order-sign"], secret_patient()))
        # cards, a 400 whose answer quotes the bad value, a 404, and a 412 from a failed fetch
        assert requests.post(base + sign, json=body, timeout=10).status_code == 200
        bad = dict(body, context=dict(body["context"], userId=SECRET_NAME))
        assert requests.post(base + sign, json=bad, timeout=10).status_code == 400
        assert requests.post(base + f"/cds-services/{SECRET_NAME}", json=body, timeout=10).status_code == 404
        unfetchable = dict(body, prefetch={"patient": secret_patient()}, fhirServer=refused_base())
        assert requests.post(base + sign, json=unfetchable, timeout=10).status_code == 412
    finally:
        status = server.stop()
    assert status == 0  # a clean stop on SIGTERM
    entries = server.log_entries()  # raises if any line is not JSON
    text = server.output()
    for secret in SECRETS:
        assert secret not in text
    messages = [e.get("msg", "") for e in entries]
    assert any(m.startswith("Booting worker") for m in messages)  # gunicorn's own lines, as JSON
    assert "Shutting down: Master" in messages
    calls = [e for e in entries if e.get("event") == "request" and e["method"] == "POST"]
    assert sorted(e["status"] for e in calls) == [200, 400, 404, 412]
    assert {e["endpoint"] for e in calls} == {"/cds-services/<service_id>"}  # the route, not the path
    assert server.metrics_dirs() == []


def test_caller_chosen_text_in_prefetch_keys_and_hook_instance_is_not_logged(kb):
    app = create_app({}, kb=kb, clock=lambda: NOW)
    stream = io.StringIO()
    ops.configure_logging("INFO", stream)
    client = app.test_client()
    bad_key = order_sign(prefetch={SECRET_NAME: "not a resource"})
    assert client.post("/cds-services/mm-tcell-order-sign", json=bad_key).status_code == 400
    odd_instance = order_sign(hookInstance=f"{SECRET_NAME} Quentin")
    client.post("/cds-services/mm-tcell-order-sign", json=odd_instance)
    ops.configure_logging("INFO")
    text = stream.getvalue()
    assert SECRET_NAME not in text and "Quentin" not in text
    lines = [json.loads(line) for line in text.splitlines() if '"event": "request"' in line]
    assert lines[0]["error_field"] == "prefetch.<key>" and lines[1]["hook_instance"] == "(not an identifier)"
