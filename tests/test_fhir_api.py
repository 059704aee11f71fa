"""The knowledge as FHIR (/fhir) and PlanDefinition/$apply, consistent with the CDS hook."""

from __future__ import annotations

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.careplan import CarePlan

from cds_service import scenarios, web
from cds_service.knowledge import KINDS
from cds_service.service import care_plan

NOW = __import__("datetime").datetime(2026, 6, 15, 12, tzinfo=__import__("datetime").timezone.utc)

B = "https://myeloma-cds.example.org/fhir"
FOLDER = scenarios.DEFAULT_FOLDER


def test_metadata_is_a_capability_statement_listing_the_resources_and_apply(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200 and response.content_type == "application/fhir+json"
    statement = response.get_json()
    CapabilityStatement.model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == set(KINDS)
    assert {i["code"] for i in resources["ValueSet"]["interaction"]} == {"read", "search-type"}
    assert resources["PlanDefinition"]["operation"][0]["name"] == "apply"
    assert statement["fhirVersion"] == "4.0.1"


def test_read_returns_the_artifact_as_loaded(client, kb):
    response = client.get("/fhir/PlanDefinition/mm-tcell")
    assert response.status_code == 200
    assert response.get_json() == kb.artifacts[f"{B}/PlanDefinition/mm-tcell"].resource


@pytest.mark.parametrize("path", ["/fhir/ValueSet/no-such-value-set", "/fhir/Patient/p1", "/fhir/Observation"])
def test_unknown_ids_and_types_are_404_operation_outcomes(client, path):
    response = client.get(path)
    assert response.status_code == 404
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "not-found"


def test_search_by_url_and_without_parameters(client, kb):
    url = f"{B}/ValueSet/hbsag"
    found = client.get("/fhir/ValueSet", query_string={"url": url}).get_json()
    Bundle.model_validate(found)
    assert found["type"] == "searchset" and found["total"] == 1
    assert found["entry"][0]["resource"]["url"] == url
    assert client.get("/fhir/ValueSet", query_string={"url": url + "-nothing"}).get_json()["total"] == 0
    everything = client.get("/fhir/ActivityDefinition").get_json()
    assert everything["total"] == len(kb.resources("ActivityDefinition")) > 10
    refused = client.get("/fhir/ValueSet", query_string={"name": "x"})
    assert refused.status_code == 400 and "unsupported search parameter" in refused.get_json()["issue"][0]["diagnostics"]


def test_site_overrides_are_what_is_served(tmp_path):
    from cds_service import create_app

    from .support.harness import EXAMPLE_SITE

    app = create_app({"site_dirs": (str(EXAMPLE_SITE),), "repeat_suppression": False})
    try:
        served = app.test_client().get("/fhir/ValueSet", query_string={"url": f"{B}/ValueSet/talquetamab-site"}).get_json()
    finally:
        web.state_of(app).feedback.close()
    codes = {c["code"] for inc in served["entry"][0]["resource"]["compose"]["include"] for c in inc.get("concept", [])}
    assert {"TALQ-40", "TALQ-2"} <= codes


# -- $apply -----------------------------------------------------------------------------------


def parameters(scenario: scenarios.Scenario, with_hook: bool = True) -> dict:
    def bundle(resources):
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}

    params = [{"name": "subject", "valueString": f"Patient/{scenario.patient}"},
              {"name": "practitioner", "valueReference": {"reference": "Practitioner/dr-1"}},
              {"name": "data", "resource": bundle(scenario.chart)},
              {"name": "draftOrders", "resource": bundle(scenario.draft_orders)}]
    if with_hook:
        params.append({"name": "hook", "valueCode": scenario.hook})
    if scenario.encounter:
        params.append({"name": "encounter", "valueString": f"Encounter/{scenario.encounter}"})
    for ref in scenario.context().get("selections", []) if scenario.hook == "order-select" else []:
        params.append({"name": "selections", "valueString": ref})
    return {"resourceType": "Parameters", "parameter": params}


def apply_http(live, plan_id: str, scenario: scenarios.Scenario, **kwargs) -> requests.Response:
    with live.lock:  # the service clock is shared with the scenario runs
        live.clock.now = scenario.now
        return requests.post(f"{live.base}/fhir/PlanDefinition/{plan_id}/$apply",
                             json=parameters(scenario, **kwargs), timeout=30)


def recommendations_of_cards(cards: list[dict]) -> dict[str, list[tuple]]:
    """Per recommendation code (a bundle's members each), the suggestions of its card."""
    return {code: sorted((s["label"], _code(s["actions"][0]["resource"])) for s in c.get("suggestions", []))
            for c in cards for code in c["extension"]["myeloma-cds.recommendations"]}


def recommendations_of_care_plan(care_plan: dict) -> dict[str, list[tuple]]:
    contained = {f"#{r['id']}": r for r in care_plan["contained"]}
    group = contained[care_plan["activity"][0]["reference"]["reference"]]
    assert group["resourceType"] == "RequestGroup"
    def codes(action: dict) -> list[str]:  # a bundle: its topic first, then the members it reports
        return [c["coding"][0]["code"] for c in action["code"][1:]] or [action["code"][0]["coding"][0]["code"]]
    return {code: sorted((n["title"], _code(contained[n["resource"]["reference"]])) for n in a.get("action", []))
            for a in group.get("action", []) for code in codes(a)}


def _code(resource: dict) -> str:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return ",".join(f"{c.get('system')}|{c.get('code')}" for c in concept.get("coding", []))


CONSISTENCY = [("seq-1.yaml", "SEQ-1 fires for a first teclistamab order"),
               ("adm-1.yaml", "ADM-1 fires for a first teclistamab dose with no premedication"),
               ("scr-1.yaml", "SCR-1 fires with neither HBsAg nor anti-HBc on record"),
               ("inf-1.yaml", "INF-1 fires on patient-view"),
               ("inf-4.yaml", "INF-4 fires for IgG 3.5 g/L with a teclistamab order"),
               ("seq-1.yaml", "SEQ-1 fires on order-select")]


@pytest.mark.parametrize("file,name", CONSISTENCY)
def test_apply_gives_the_same_recommendations_and_suggestions_as_the_hook(live, file, name):
    scenario = scenarios.find(FOLDER / file, name)
    hook_cards = live.run(scenario, "prefetch")["cards"]
    plan_id = next(s["id"] for s in live.discovery.values() if s["hook"] == scenario.hook).rsplit("-order-", 1)[0]
    response = apply_http(live, plan_id, scenario)
    assert response.status_code == 200, response.text
    care_plan = response.json()
    CarePlan.model_validate(care_plan)  # valid FHIR R4, contained RequestGroup and proposals included
    assert recommendations_of_care_plan(care_plan) == recommendations_of_cards(hook_cards)
    assert set(recommendations_of_care_plan(care_plan)) >= scenario.expect and scenario.expect


def test_apply_action_carries_priority_documentation_and_selection_behavior(live):
    scenario = scenarios.find(FOLDER / "inf-1.yaml", "INF-1 fires for a bispecific order")
    care_plan = apply_http(live, "mm-tcell", scenario, with_hook=False).json()  # default hook: order-sign
    group = care_plan["contained"][0]
    action = next(a for a in group["action"] if a["code"][0]["coding"][0]["code"] == "INF-SC")
    assert [c["coding"][0]["code"] for c in action["code"]] == ["INF-SC", "INF-1"]  # the bundle, then its member
    assert action["priority"] == "urgent" and action["selectionBehavior"] == "any"
    assert action["documentation"][0]["url"].startswith("https://doi.org/")
    assert [n["title"] for n in action["action"]] == ["Valacyclovir 500 mg twice daily (INF-1)"]
    assert care_plan["subject"] == {"reference": "Patient/p1"} and care_plan["intent"] == "proposal"


def test_type_level_apply_by_url(live):
    scenario = scenarios.find(FOLDER / "seq-1.yaml", "SEQ-1 fires for a first teclistamab order")
    with live.lock:
        live.clock.now = scenario.now
        response = requests.post(f"{live.base}/fhir/PlanDefinition/$apply",
                                 params={"url": f"{B}/PlanDefinition/mm-tcell"}, json=parameters(scenario), timeout=30)
    assert response.status_code == 200
    assert "SEQ-1" in recommendations_of_care_plan(response.json())


@pytest.mark.parametrize("body,status,says", [
    ({"resourceType": "Patient"}, 400, "must be a FHIR Parameters resource"),
    ({"resourceType": "Parameters", "parameter": [{"name": "practitioner", "valueString": "Practitioner/x"}]},
     400, "Parameters.subject: is required"),
    ({"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Observation/1"},
                                                  {"name": "practitioner", "valueString": "Practitioner/x"}]},
     400, "Parameters.subject: must be one reference Patient/<id>"),
    ({"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/p1"},
                                                  {"name": "practitioner", "valueString": "Practitioner/x"},
                                                  {"name": "hook", "valueCode": "patient-view"}]},
     400, "not a trigger of PlanDefinition/mm-tcell"),
    ({"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/p1"},
                                                  {"name": "practitioner", "valueString": "Practitioner/x"},
                                                  {"name": "data", "valueString": "x"}]},
     400, "Parameters.data: must be one Bundle"),
    ({"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/p1"},
                                                  {"name": "practitioner", "valueString": "Practitioner/x"},
                                                  {"name": "data", "resource": {"resourceType": "Bundle", "entry": 5}}]},
     400, "Parameters.data: Bundle.entry must be an array"),
    ({"resourceType": "Parameters", "parameter": 5}, 400, "Parameters.parameter: must be an array"),
])
def test_bad_parameters_are_400_operation_outcomes(client, body, status, says):
    response = client.post("/fhir/PlanDefinition/mm-tcell/$apply", json=body)
    assert response.status_code == status
    assert says in response.get_json()["issue"][0]["diagnostics"]


def test_apply_to_an_unknown_plan_definition_is_404(client):
    response = client.post("/fhir/PlanDefinition/nope/$apply", json={"resourceType": "Parameters"})
    assert response.status_code == 404 and response.get_json()["resourceType"] == "OperationOutcome"
    by_url = client.post("/fhir/PlanDefinition/$apply", query_string={"url": f"{B}/PlanDefinition/nope"},
                         json={"resourceType": "Parameters"})
    assert by_url.status_code == 404


def test_apply_maps_a_card_it_cannot_trace_to_an_authored_action_from_the_card_alone(kb):
    """A card whose code no top-level action of the PlanDefinition holds (a site's card, a
    nested action) still becomes a RequestGroup action: from its own text, never a 500."""
    plan = kb.services["mm-tcell-order-sign"].plan
    card = {"uuid": "c-1", "summary": "A site's own card", "detail": "Why, in **Markdown**.",
            "indicator": "info", "source": {"label": "Site", "topic": {"system": "urn:site", "code": "SITE-9"}},
            "suggestions": [{"uuid": "s-1", "label": "Do it", "actions": [
                {"type": "create", "description": "Order it", "resource": {"resourceType": "ServiceRequest"}}]}]}
    context = {"patientId": "p1", "userId": "Practitioner/dr-1"}
    plan_out = care_plan(kb, plan, "order-sign", context, [card], NOW)
    group = plan_out["contained"][0]
    [action] = group["action"]
    assert action["title"] == "A site's own card" and action["description"] == "Why, in **Markdown**."
    assert action["priority"] == "routine" and "documentation" not in action  # priority from the indicator
    assert action["code"] == [{"coding": [{"system": "urn:site", "code": "SITE-9"}]}]
    assert action["action"][0]["resource"] == {"reference": "#proposal-1"}
    assert plan_out["contained"][1] == {"resourceType": "ServiceRequest", "id": "proposal-1"}
