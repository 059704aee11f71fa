"""The example requests in examples/requests/ (the ones the docs tell a new user to curl)
are valid CDS Hooks 2.0 requests with prefetch, and the service answers each with cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "requests"

# file -> (service it is posted to, the recommendation codes of the cards it must get)
# issue 13: a first teclistamab dose with no tocilizumab also gets ADM-5 and TOX-3 (in ADM-SU)
EXPECTED = {
    "order-sign-teclistamab.json": (
        "mm-tcell-order-sign", {"SEQ-1", "SCR-1", "SCR-2", "SCR-3", "SCR-4", "INF-1", "INF-2", "ADM-1", "ADM-5", "TOX-3"}),
    # HBsAg and anti-HBc are already in the draft orders: no SCR-1
    "order-select-teclistamab.json": (
        "mm-tcell-order-select", {"SEQ-1", "SCR-2", "SCR-3", "SCR-4", "INF-1", "INF-2", "ADM-1", "ADM-5", "TOX-3"}),
    # the test clock is 15 June, outside the influenza season: no INF-8
    "patient-view.json": ("mm-tcell-chart", {"INF-1", "INF-2", "MON-2"}),
}


def test_every_example_request_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_request_has_a_prefetch_for_every_discovery_template(client, name):
    service, _ = EXPECTED[name]
    body = json.loads((EXAMPLES / name).read_text())
    discovery = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}[service]
    assert body["hook"] == discovery["hook"]
    assert set(body["prefetch"]) == set(discovery["prefetch"])
    assert "fhirServer" not in body  # answered from prefetch alone: nothing is fetched


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_service_answers_the_example_request_with_its_cards(client, name):
    service, codes = EXPECTED[name]
    response = client.post(f"/cds-services/{service}", data=(EXAMPLES / name).read_bytes(),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    fired = [code for c in cards for code in c["extension"]["myeloma-cds.recommendations"]]
    assert sorted(fired) == sorted(codes)  # each expected recommendation, once (bundles count as their members)
    assert all(c["uuid"] and c["summary"] and c["indicator"] for c in cards)
