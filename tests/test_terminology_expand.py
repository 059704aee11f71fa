"""Product-level drug codes (RECOMMENDATIONS-v2 D-10): a medication coded only at product
level (RxNorm SCD/SBD) or only through Medication.ingredient counts as the drug, and
`mm-cds terminology expand` adds RxNorm products through RxNav into a site directory.

RxNav is a fake on loopback (tests/support/rxnav.py): no test uses the network. Its
product codes are test data (9-digit, "TEST ..."), never shipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cds_service import cli, config, knowledge, scenarios
from cds_service.service import Local

from .support.loopback import serving
from .support.ports import free_port
from .support.rxnav import FakeRxNav

ROOT = Path(__file__).resolve().parent.parent
BASE = "https://myeloma-cds.example.org/fhir/ValueSet/"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
VALTREX_TEST = "999000002"
PRODUCTS = {
    "73645": [("999000001", "TEST valacyclovir 500 MG Oral Tablet", "SCD"),
              (VALTREX_TEST, "TEST valacyclovir 500 MG Oral Tablet [Valtrex]", "SBD"),
              ("999000009", "TEST Valtrex", "BN")],  # a term type not asked for: never returned
    "306266": [("999000101", "TEST entecavir 0.5 MG Oral Tablet", "SCD")],  # the seed is unverified
}


def expand(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    for name in os.environ:
        if name.startswith("MM_CDS_") and name != "MM_CDS_DATA_DIR":
            monkeypatch.delenv(name)
    capsys.readouterr()
    status = cli.main(["terminology", "expand", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture()
def expanded(monkeypatch, capsys, tmp_path) -> Path:
    shipped = {p.name: p.read_bytes() for p in (ROOT / "valuesets").glob("*.json")}
    fake = FakeRxNav(related=PRODUCTS)
    with serving(fake) as base:
        status, out, err = expand(monkeypatch, capsys, "--rxnav", f"{base}/REST", "--out", str(tmp_path / "site"))
    assert status == 0, err
    assert "valacyclovir: 2 code(s) added from 1 seed(s)" in out
    assert "linvoseltamab: no RxNorm code to expand from" in out
    assert any(r.startswith("/REST/rxcui/73645/related.json?tty=IN+PIN+MIN+SCD+SBD+SCDC+GPCK+BPCK") for r in fake.requests)
    assert {p.name: p.read_bytes() for p in (ROOT / "valuesets").glob("*.json")} == shipped  # never edited
    return tmp_path / "site"


def site_kb(site: Path) -> knowledge.KnowledgeBase:
    settings = config.load({}, environ={})
    return knowledge.load(settings.knowledge_dirs + (str(site),), settings.canonical_base)


def test_expand_writes_the_products_with_their_source_and_date_into_the_site_directory(expanded):
    vs = json.loads((expanded / "ValueSet-valacyclovir.rxnav.json").read_text())
    assert vs["url"] == BASE + "valacyclovir"  # replaces the shipped one at start-up
    assert {"valueSet": [BASE + "valacyclovir-site"]} in vs["compose"]["include"]  # the site companion stays
    added = {c["code"]: c for inc in vs["compose"]["include"] if inc.get("system") == RXNORM for c in inc["concept"]}
    assert set(added) == {"73645", "999000001", VALTREX_TEST}  # the BN was not asked for
    source = added[VALTREX_TEST]["extension"][0]["valueString"]
    assert "related.json of 73645 (SBD)" in source and vs["expansion"]["timestamp"][:10] in source
    assert {p["name"] for p in vs["expansion"]["parameter"]} == {"rxnav", "termTypes", "seeds"}
    assert any(e["url"].endswith("/rxnav-expand") for e in vs["extension"])  # the marks are kept


def test_expanded_products_are_members_and_inherit_an_unverified_seed(expanded):
    kb = site_kb(expanded)
    assert kb.terminology.get(BASE + "valacyclovir").contains(RXNORM, VALTREX_TEST)
    assert kb.terminology.get(BASE + "hsv-vzv-prophylaxis").contains(RXNORM, VALTREX_TEST)
    entecavir = {c.code: c for c in kb.terminology.get(BASE + "entecavir").concepts}
    assert entecavir["999000101"].unverified  # from seed 306266, itself recalled
    assert not {c.code: c for c in kb.terminology.get(BASE + "valacyclovir").concepts}[VALTREX_TEST].unverified


INF1_ON_PRODUCT = {
    "defaults": {"hook": "order-sign", "baseChart": "quiet-chart", "baseDraftOrders": "premedication",
                 "omit": ["valacyclovir-active"]},
    "scenarios": [{
        "name": "INF-1 near miss - valacyclovir active, coded only by a brand product (SBD)",
        "draftOrders": [{"use": "teclistamab-order"}],
        "chart": [{"use": "valacyclovir-active",
                   "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": VALTREX_TEST}]}}],
        "expect": [],
    }],
}


def fired(kb: knowledge.KnowledgeBase, document: dict, tmp_path: Path) -> list[str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(document))
    (scenario,) = scenarios.load_file(path, scenarios.load_library())
    return sorted(code for _, answer in Local.open(kb).run(scenario) for card in answer["cards"]
                  for code in scenarios.card_codes(card))


def test_a_product_coded_antiviral_is_seen_once_the_site_has_the_expansion(expanded, kb, tmp_path):
    assert "INF-1" in fired(kb, INF1_ON_PRODUCT, tmp_path)  # shipped only: the SBD is invisible
    assert "INF-1" not in fired(site_kb(expanded), INF1_ON_PRODUCT, tmp_path)  # not told to start one


def inf2(chart_item: dict) -> dict:
    return {
        "defaults": {"hook": "order-sign", "baseChart": "quiet-chart", "baseDraftOrders": "premedication",
                     "omit": ["tmp-smx-active"]},
        "scenarios": [{"name": "INF-2 near miss", "draftOrders": [{"use": "teclistamab-order"}],
                       "chart": [chart_item], "expect": []}],
    }


def test_tmp_smx_coded_only_as_a_clinical_drug_counts(kb, tmp_path):
    # 198334 (SMX 400 MG / TMP 80 MG Oral Tablet), from the eCQM value set copy, unverified
    product = {"use": "tmp-smx-active", "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "198334"}]}}
    assert "INF-2" not in fired(kb, inf2(product), tmp_path)
    other = {"use": "tmp-smx-active", "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "281"}]}}
    assert "INF-2" in fired(kb, inf2(other), tmp_path)  # control: acyclovir is not PJP prophylaxis


def test_a_medication_whose_only_ingredient_is_the_ingredient_code_counts(kb, tmp_path):
    by_ingredient = {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order", "authoredOn": "2026-05-01",
        "contained": [{"resourceType": "Medication", "id": "m", "code": {"text": "co-trimoxazole (local)"},
                       "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "10831"}]}}]}],
        "medicationReference": {"reference": "#m"},
    }
    assert "INF-2" not in fired(kb, inf2(by_ingredient), tmp_path)


@pytest.mark.parametrize("mode, message", [("html", "is not JSON"), ("shape", "has no relatedGroup"),
                                           ("500", "answered HTTP 500")])
def test_a_bad_answer_stops_the_command_and_writes_nothing(monkeypatch, capsys, tmp_path, mode, message):
    with serving(FakeRxNav(related=PRODUCTS, mode=mode)) as base:
        status, _, err = expand(monkeypatch, capsys, "--rxnav", f"{base}/REST", "--out", str(tmp_path / "site"))
    assert status == 1
    assert message in err and "nothing written" in err
    assert not list(tmp_path.rglob("*.json"))


def test_rxnav_down_is_a_clear_error(monkeypatch, capsys, tmp_path):
    port = free_port()  # a port nobody listens on
    status, _, err = expand(monkeypatch, capsys, "--rxnav", f"http://127.0.0.1:{port}/REST", "--out", str(tmp_path))
    assert status == 1
    assert f"cannot reach RxNav at http://127.0.0.1:{port}/REST/rxcui/" in err


def test_expand_needs_a_directory_to_write_to(monkeypatch, capsys):
    status, _, err = expand(monkeypatch, capsys)
    assert status == 2 and "give --out DIR" in err
