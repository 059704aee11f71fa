"""Operations endpoints in one process: /health, /ready and the Prometheus /metrics.
(Under gunicorn with several workers: test_production_server.py.)"""

from __future__ import annotations

import json
import re

import pytest
from werkzeug.wrappers import Response

from cds_service import config, create_app, web
from cds_service.errors import ConfigurationError

from .conftest import NOW
from .support.cards import member_codes
from .support.fhir_server import FhirServer
from .support.requests_ import empty_prefetch, order_sign
from .support.scrape import sample
from .support.sites import oversized_summary_site

SIGN = "/cds-services/mm-tcell-order-sign"
CALL = "/cds-services/<service_id>"


def test_health_is_ok_and_ready_tells_the_knowledge(kb):
    # The shipped knowledge does not meet the go-live gate: accepted here, explicitly (the
    # gate's own tests are in test_go_live.py).
    app = create_app({"accept_unverified_treatment_codes": ("all",)}, kb=kb, clock=lambda: NOW)
    client = app.test_client()
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    knowledge = ready.get_json()["knowledge"]
    assert ready.get_json()["status"] == "ready"
    assert {i["valueSet"] for i in ready.get_json()["goLive"]["accepted"]} >= {"talquetamab", "linvoseltamab"}
    web.state_of(app).feedback.close()
    assert knowledge["fingerprint"] == kb.fingerprint and len(kb.fingerprint) == 16
    assert (knowledge["services"], knowledge["files"]) == (len(kb.services), len(kb.files))
    assert knowledge["services"] > 0
    assert knowledge["loadSeconds"] == round(kb.load_seconds, 3) and knowledge["loadedAt"].startswith("20")


def test_ready_is_503_when_there_is_nothing_to_serve(tmp_path):
    app = create_app({"knowledge_dirs": (str(tmp_path),)}, clock=lambda: NOW)
    client = app.test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "unavailable"
    assert "no CDS service is loaded" in ready.get_json()["reason"]
    assert client.get("/health").status_code == 200  # alive, just not ready


@pytest.fixture()
def metered(tmp_path, kb):
    """An app whose SEQ-1 card is always dropped (oversized summary), with a small body limit."""
    site = oversized_summary_site(tmp_path / "site", kb, "SEQ-1")
    app = create_app({"site_dirs": (str(site),), "max_request_bytes": 20000, "fetch_timeout": 2.0},
                     clock=lambda: NOW)
    return app.test_client()


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    return response.get_data(as_text=True)


def test_metrics_count_requests_latency_cards_fetches_and_errors(metered):
    before = scrape(metered)
    services = {s["id"]: s for s in metered.get("/cds-services").get_json()["services"]}
    prefetch = empty_prefetch(services["mm-tcell-order-sign"], {"resourceType": "Patient", "id": "p1"})
    issued = metered.post(SIGN, json=order_sign(prefetch=prefetch))
    assert issued.status_code == 200
    issued_codes = member_codes(issued.get_json()["cards"])
    assert issued_codes and "SEQ-1" not in issued_codes  # SEQ-1 fired and was dropped
    assert metered.post(SIGN, json=order_sign(hook="nope")).status_code == 400
    assert metered.post("/cds-services/unknown", json=order_sign()).status_code == 404
    assert metered.post(SIGN, json=order_sign()).status_code == 412  # no prefetch, no fhirServer
    assert metered.post(SIGN, data=json.dumps(order_sign()) + " " * 30000,
                        content_type="application/json").status_code == 413
    with FhirServer() as fhir:
        fhir.reset([{"resourceType": "Patient", "id": "p1"}])
        fhir.fault = lambda req: Response("boom", status=500) if req.path == "/fhir/Procedure" else None
        fetching = order_sign(fhirServer=fhir.base, fhirAuthorization={
            "access_token": "test-token", "token_type": "Bearer", "expires_in": 60, "scope": "s", "subject": "x"})
        assert metered.post(SIGN, json=fetching).status_code == 412
        assert fhir.requests
    # counted per key fetched, whether its search was its own or merged with others' (data/_searches.py)
    templates = services["mm-tcell-order-sign"]["prefetch"]
    kinds = [re.split(r"[?/]", template)[0] for template in templates.values()
             if all(name in fetching["context"] for name in re.findall(r"\{\{\s*context\.(\w+)\s*\}\}", template))]
    fetched, failed = len(kinds), kinds.count("Procedure")
    after = scrape(metered)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("mm_cds_requests_total", endpoint="/cds-services", status="200") == 1
    assert delta("mm_cds_requests_total", endpoint=CALL, service="mm-tcell-order-sign", status="200") == 1
    assert delta("mm_cds_requests_total", endpoint=CALL, service="", status="404") == 1  # no id as a label
    for status, count in (("400", 1), ("404", 1), ("412", 2), ("413", 1)):
        assert delta("mm_cds_errors_total", kind=status) == count
    assert delta("mm_cds_errors_total", kind="card_dropped") == 1
    for code in issued_codes:
        assert delta("mm_cds_cards_total", service="mm-tcell-order-sign", code=code) == 1
    assert delta("mm_cds_cards_total", code="SEQ-1") == 0
    assert fetched > failed > 0
    assert delta("mm_cds_fhir_fetches_total", outcome="http_status") == failed  # the Procedure keys
    assert delta("mm_cds_fhir_fetches_total", outcome="ok") == fetched - failed
    assert delta("mm_cds_fhir_fetch_seconds_count") == fetched
    calls = delta("mm_cds_request_seconds_count", endpoint=CALL)
    assert calls == 6
    assert delta("mm_cds_request_seconds_bucket", endpoint=CALL, le="10.0") == calls
    assert sample(after, "mm_cds_knowledge_info", fingerprint=web.state_of(metered.application).kb.fingerprint) == 1
    assert "le=\"0.001\"" in after and "le=\"0.05\"" in after  # buckets for a 1-50 ms service


def test_a_bad_setting_is_refused_naming_it():
    with pytest.raises(ConfigurationError, match=r"setting workers \(MM_CDS_WORKERS\): 'abc' is not a valid int"):
        config.load(environ={"MM_CDS_WORKERS": "abc"})
    assert config.load(environ={"MM_CDS_WORKERS": "3", "MM_CDS_GRACEFUL_TIMEOUT": "12"}).workers == 3


@pytest.mark.parametrize("command", [["serve"], ["validate"], ["catalogue"]])
def test_a_bad_setting_stops_the_command_with_one_line_naming_it(command, monkeypatch, capsys):
    from cds_service import cli

    monkeypatch.setenv("MM_CDS_PORT", "abc")
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err == "mm-cds: setting port (MM_CDS_PORT): 'abc' is not a valid int\n"
