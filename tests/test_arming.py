"""D-11 armed rules: a rule whose trigger value set has no code never fires, and the rules
not armed (or not armed for some products) are listed at start-up, in /ready, in
`mm-cds terminology check` and in every trace."""

from __future__ import annotations

import json
from pathlib import Path

from cds_service import cli, create_app, knowledge

from .conftest import NOW
from .support.cards import member_codes
from .support.requests_ import empty_prefetch, order_sign

B = "https://myeloma-cds.example.org/fhir"
SIGN = "/cds-services/mm-tcell-order-sign"


def call(client, explain: bool = True):
    """An order-sign call for a patient with nothing on record, prefetch filled empty."""
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    prefetch = empty_prefetch(services["mm-tcell-order-sign"], {"resourceType": "Patient", "id": "p1"})
    return client.post(SIGN, json=order_sign(prefetch=prefetch), headers={"X-CDS-Explain": "true"} if explain else {})


def site_with(directory: Path, value_set: str, codes: list[tuple[str, str]]) -> Path:
    """A site directory whose companion of `value_set` holds these (system, code) pairs."""
    directory.mkdir(exist_ok=True)
    vs = {"resourceType": "ValueSet", "id": f"{value_set}-site", "url": f"{B}/ValueSet/{value_set}-site",
          "status": "active", "compose": {"include": [{"system": s, "concept": [{"code": c}]} for s, c in codes]}}
    (directory / f"ValueSet-{value_set}-site.json").write_text(json.dumps(vs))
    return directory


def emptied(directory: Path, kb: knowledge.KnowledgeBase, value_set: str) -> Path:
    """A site that replaces a shipped value set by one with no code (a site that removed them)."""
    directory.mkdir(exist_ok=True)
    shipped = dict(kb.artifacts[f"{B}/ValueSet/{value_set}"].resource)
    shipped["compose"] = {"include": [{"valueSet": [f"{B}/ValueSet/{value_set}-site"]}]}
    (directory / f"ValueSet-{value_set}.json").write_text(json.dumps(shipped))
    return directory


def test_the_shipped_rules_are_not_armed_for_linvoseltamab_until_a_site_maps_it(kb, tmp_path):
    rows = [r.line() for r in knowledge.unarmed(kb.plans.values())]
    assert "ADM-2 (mm-tcell): not armed for linvoseltamab" in rows  # D-11's own example
    site = site_with(tmp_path / "site", "linvoseltamab", [("http://example-hospital.org/fhir/CodeSystem/formulary", "LINVO")])
    mapped = knowledge.load((*knowledge_dirs(), str(site)), B)
    # ADM-4 (issue 13) stays not armed for linvoseltamab: its restart table ships empty, codes do not arm it
    assert not [r for r in knowledge.unarmed(mapped.plans.values()) if "linvoseltamab" in r.reason and r.code != "ADM-4"]
    assert "ADM-4 (mm-tcell): not armed for elranatamab, linvoseltamab" in rows


def knowledge_dirs() -> tuple[str, ...]:
    from cds_service import config
    return config.load().directories


def test_a_rule_whose_trigger_value_set_is_empty_never_fires_and_says_why(kb, tmp_path, capsys):
    site = emptied(tmp_path / "site", kb, "talquetamab")
    loaded = knowledge.load((*knowledge_dirs(), str(site)), B)
    [row] = [r for r in knowledge.unarmed(loaded.plans.values()) if r.code == "TOX-1" and r.plan == "mm-tcell"]
    assert not row.partial and "ValueSet talquetamab has no code" in row.reason
    app = create_app({"explain_enabled": True, "site_dirs": (str(site),), "accept_unverified_treatment_codes": ("all",)},
                     clock=lambda: NOW)
    client = app.test_client()
    ready = client.get("/ready").get_json()
    assert {"plan": "mm-tcell", "code": "TOX-1", "partial": False} .items() <= next(
        r for r in ready["knowledge"]["notArmed"] if r["code"] == "TOX-1" and r["plan"] == "mm-tcell").items()
    response = call(client)
    trace = response.get_json()["extension"]["org.myeloma-cds.explain"]
    tox1 = next(a for a in trace["actions"] if a["code"] == "TOX-1")
    assert tox1["fired"] is False and any("not armed" in (c.get("note") or "") for c in tox1["conditions"])
    assert any(n.startswith("TOX-1 not armed: ValueSet talquetamab has no code") for n in trace["notes"])
    assert "TOX-1" not in member_codes(response.get_json()["cards"])


def test_terminology_check_and_every_trace_list_the_rules_not_armed(client, capsys, monkeypatch):
    monkeypatch.delenv("MM_CDS_SITE_DIRS", raising=False)
    cli.main(["terminology", "check"])
    out = capsys.readouterr().out
    assert "Rules not armed (D-11" in out and "  - ADM-2 (mm-tcell): not armed for linvoseltamab" in out
    response = call(client)
    notes = response.get_json()["extension"]["org.myeloma-cds.explain"]["notes"]
    assert "ADM-2 not armed for linvoseltamab" in notes
