"""The go-live gate (RECOMMENDATIONS-v2 D-11, issue 11 point 5): a treatment value set
(marked `go-live-required`) that expands, shipped plus site, to no code or only to
unverified codes stops the production server, warns on the development server, makes
/ready answer 503 and `mm-cds terminology check` exit 1, unless
accept_unverified_treatment_codes accepts it (logged at CRITICAL)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service import config, create_app, knowledge, web
from cds_service.errors import ConfigurationError

from .conftest import NOW

ROOT = Path(__file__).resolve().parent.parent
BASE = "https://myeloma-cds.example.org/fhir"
TREATMENTS = {"teclistamab", "elranatamab", "talquetamab", "linvoseltamab", "cilta-cel", "ide-cel"}


def kb_with(*sites: Path) -> knowledge.KnowledgeBase:
    settings = config.load({}, environ={})
    return knowledge.load(settings.knowledge_dirs + tuple(str(s) for s in sites), settings.canonical_base)


def companion(directory: Path, name: str, unverified: bool) -> Path:
    """A site companion for `name` with one local formulary code (test data)."""
    concept: dict = {"code": f"TEST-{name}", "display": f"{name} (test formulary)"}
    if unverified:
        concept["extension"] = [{"url": f"{BASE}/StructureDefinition/concept-unverified", "valueBoolean": True}]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"ValueSet-{name}-site.json").write_text(json.dumps({
        "resourceType": "ValueSet", "id": f"{name}-site", "url": f"{BASE}/ValueSet/{name}-site", "status": "active",
        "compose": {"include": [{"system": "http://example-hospital.org/formulary", "concept": [concept]}]}}))
    return directory


def test_the_treatment_value_sets_are_marked_in_data(kb):
    assert set(knowledge.gate_status(kb).required) == TREATMENTS


def test_shipped_knowledge_does_not_meet_the_gate_naming_each_value_set_and_why(kb):
    gate = knowledge.gate_status(kb)
    reasons = {i.name: i.reason for i in gate.open}
    assert set(reasons) == {"talquetamab", "linvoseltamab"}
    assert reasons["linvoseltamab"] == f"no code: add the site's codes to {BASE}/ValueSet/linvoseltamab-site"
    assert reasons["talquetamab"].startswith("only unverified codes (rxnorm|2644447, ")  # a public copy
    assert not gate.met


def test_site_codes_meet_the_gate_and_unverified_ones_do_not(tmp_path):
    site = companion(tmp_path / "site", "talquetamab", unverified=False)
    companion(site, "linvoseltamab", unverified=True)
    gate = knowledge.gate_status(kb_with(site))
    assert [i.name for i in gate.open] == ["linvoseltamab"]
    assert gate.open[0].reason.startswith("only unverified codes (formulary|TEST-linvoseltamab)")


def test_the_accept_setting_names_value_sets_or_all_and_refuses_a_typo(kb):
    assert knowledge.gate_status(kb, ("all",)).met
    gate = knowledge.gate_status(kb, ("talquetamab",))
    assert [i.name for i in gate.open] == ["linvoseltamab"] and [i.name for i in gate.accepted] == ["talquetamab"]
    with pytest.raises(ConfigurationError, match="accept_unverified_treatment_codes.*talquetamb is not a treatment"):
        knowledge.gate_status(kb, ("talquetamb",))
    settings = config.load({}, environ={"MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES": "talquetamab, linvoseltamab"})
    assert settings.accept_unverified_treatment_codes == ("talquetamab", "linvoseltamab")


def test_the_production_app_refuses_to_start_naming_each_value_set(kb):
    with pytest.raises(ConfigurationError) as refused:
        create_app({}, kb=kb, clock=lambda: NOW, production=True)
    assert "go-live gate not met" in str(refused.value)
    assert "talquetamab (Talquetamab): only unverified codes" in str(refused.value)
    assert "linvoseltamab (Linvoseltamab): no code" in str(refused.value)


def test_accepted_explicitly_the_production_app_starts_and_logs_critical(kb, caplog):
    with caplog.at_level(logging.CRITICAL, logger="cds_service.web._health"):
        app = create_app({"accept_unverified_treatment_codes": ("all",), "service_secret": "test-secret-0123456789"},
                         kb=kb, clock=lambda: NOW, production=True)
    critical = [r for r in caplog.records if getattr(r, "event", None) == "go_live_accepted"]
    assert critical and critical[0].levelno == logging.CRITICAL
    assert set(critical[0].valueSets) == {"talquetamab", "linvoseltamab"}
    ready = app.test_client().get("/ready")
    assert ready.status_code == 200
    assert {i["valueSet"] for i in ready.get_json()["goLive"]["accepted"]} == {"talquetamab", "linvoseltamab"}
    web.state_of(app).feedback.close()


def test_the_development_app_starts_warns_and_is_not_ready(kb, caplog):
    with caplog.at_level(logging.WARNING, logger="cds_service.web._health"):
        app = create_app({}, kb=kb, clock=lambda: NOW)
    warned = [r for r in caplog.records if getattr(r, "event", None) == "go_live_open"]
    assert warned and warned[0].levelno == logging.WARNING and set(warned[0].valueSets) == {"talquetamab", "linvoseltamab"}
    ready = app.test_client().get("/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "unavailable" and "go-live gate not met" in body["reason"]
    assert {i["valueSet"]: i["reason"][:7] for i in body["goLive"]["open"]} == {"talquetamab": "only un",
                                                                               "linvoseltamab": "no code"}
    web.state_of(app).feedback.close()


def test_a_typo_in_the_setting_stops_start_up_naming_the_setting(kb):
    with pytest.raises(ConfigurationError, match="MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES"):
        create_app({"accept_unverified_treatment_codes": ("tecvayli",)}, kb=kb, clock=lambda: NOW)


def test_the_wsgi_entry_point_exits_1_with_the_list(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_CDS_")}
    env["MM_CDS_DATA_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import cds_service.wsgi"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"startup_failed"' in line]
    assert failed and failed[0]["level"] == "critical"
    assert "talquetamab" in failed[0]["msg"] and "linvoseltamab" in failed[0]["msg"]
