"""One structured log line per request, and never patient data in it."""

from __future__ import annotations

import io
import json
import logging

from cds_service import create_app, logs

from .conftest import NOW
from .support.requests_ import empty_prefetch, order_sign, teclistamab_order

SECRET_ID = "pat-7731-secret"
SECRET_NAME = "Zebedee"


def test_request_log_has_the_request_facts_and_no_patient_data(kb):
    app = create_app({"explain_enabled": True}, kb=kb, clock=lambda: NOW)
    stream = io.StringIO()
    logs.configure("INFO", stream)
    client = app.test_client()
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    patient = {"resourceType": "Patient", "id": SECRET_ID, "name": [{"family": SECRET_NAME, "given": ["Quentin"]}],
               "identifier": [{"system": "urn:mrn", "value": "MRN-99812"}]}
    prefetch = empty_prefetch(services["mm-tcell-order-sign"], patient)
    body = order_sign([teclistamab_order(patient=SECRET_ID)], patient=SECRET_ID, prefetch=prefetch)
    assert client.post("/cds-services/mm-tcell-order-sign?explain=1", json=body).status_code == 200
    bad = dict(body, context=dict(body["context"], userId="Zebedee"))
    assert client.post("/cds-services/mm-tcell-order-sign", json=bad).status_code == 400
    logs.configure("INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    calls = [line for line in lines if line.get("event") == "request" and line["method"] == "POST"]
    assert len(calls) == 2
    ok = calls[0]
    assert ok["service"] == "mm-tcell-order-sign" and ok["hook"] == "order-sign" and ok["status"] == 200
    assert ok["hook_instance"] == body["hookInstance"] and isinstance(ok["ms"], float)
    assert {"SEQ-1", "SCR-1", "SCR-3", "ADM-1"} <= set(ok["codes"])
    assert calls[1]["status"] == 400 and calls[1]["error_field"] == "context.userId"
    text = stream.getvalue()
    for secret in (SECRET_ID, SECRET_NAME, "Quentin", "MRN-99812"):
        assert secret not in text
    logging.getLogger().handlers  # the default handler is back for the other tests
