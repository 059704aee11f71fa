"""PlanDefinition/$apply: the same recommendations as the CDS hook, as a FHIR CarePlan.

In: a Parameters resource (FHIR R4 PlanDefinition-apply, with CPG's `data`):
    subject       Patient/<id> (valueString or valueReference)           required
    practitioner  Practitioner/<id> or PractitionerRole/<id>               required (the hooks' userId)
    encounter     Encounter/<id>                                          optional
    data          a Bundle of the patient's resources: plays the role of prefetch
    hook          which trigger to evaluate (valueCode); default below
    draftOrders   a Bundle of the orders being written (order hooks)
    selections    valueString Type/id, repeated (order-select; default: every draft order)
    url           the PlanDefinition's canonical (type-level $apply only)

The hook, when not given: order-sign if the PlanDefinition answers it ($apply has no
selection, so every draft order is a trigger, which is what order-sign means), else its
first hook (patient-view for the chart review PlanDefinition).

The request is turned into the CDS Hooks call it stands for and answered by hooks.call:
same validation, retrieves, evaluation and cards. Out: a CarePlan whose activity
references a contained RequestGroup with one action per card (title, description,
priority, code, documentation, selectionBehavior, one nested action per suggestion whose
resource is contained in the CarePlan).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from cds_service.data import FetchSettings, bundle_resources
from cds_service.errors import InvalidRequest
from cds_service.knowledge import INDICATOR, RECOMMENDATIONS_KEY, KnowledgeBase, Plan, Service
from cds_service.service import _call as hooks
from cds_service.service._inprocess import prefetch_from_data

_ACTION = re.compile(r"^PlanDefinition\.action\[(\d+)\]$")
_REFERENCE = {"subject": ("Patient",), "encounter": ("Encounter",), "practitioner": ("Practitioner", "PractitionerRole")}


def parameters(body: Any) -> dict[str, list[dict]]:
    """Parameters.parameter grouped by name; 400 unless the body is a Parameters resource."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest("(body): must be a FHIR Parameters resource", field="(body)")
    given = body.get("parameter") or []
    if not isinstance(given, list):
        raise InvalidRequest("Parameters.parameter: must be an array", field="Parameters.parameter")
    grouped: dict[str, list[dict]] = {}
    for i, param in enumerate(given):
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise InvalidRequest(f"Parameters.parameter[{i}]: must have a name", field=f"Parameters.parameter[{i}]")
        grouped.setdefault(param["name"], []).append(param)
    return grouped


def _value(param: dict) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value.get("reference") if key == "valueReference" and isinstance(value, dict) else value
    return param.get("resource")


def _reference(params: dict[str, list[dict]], name: str, required: bool) -> str | None:
    found = params.get(name) or []
    if not found:
        if required:
            raise InvalidRequest(f"Parameters.{name}: is required ({' or '.join(_REFERENCE[name])}/<id>)", field=name)
        return None
    value = _value(found[0])
    kinds = _REFERENCE[name]
    if len(found) > 1 or not isinstance(value, str) or not re.fullmatch(
            rf"({'|'.join(kinds)})/[A-Za-z0-9\-.]{{1,64}}", value):
        raise InvalidRequest(f"Parameters.{name}: must be one reference {' or '.join(kinds)}/<id>", field=name)
    return value


def _bundle(params: dict[str, list[dict]], name: str) -> list[dict]:
    found = params.get(name) or []
    if not found:
        return []
    resource = found[0].get("resource")
    if len(found) > 1 or not isinstance(resource, dict) or resource.get("resourceType") != "Bundle":
        raise InvalidRequest(f"Parameters.{name}: must be one Bundle (parameter.resource)", field=name)
    if not isinstance(resource.get("entry") or [], list):
        raise InvalidRequest(f"Parameters.{name}: Bundle.entry must be an array", field=name)
    return bundle_resources(resource)


def canonical_url(params: dict[str, list[dict]], query_url: str | None) -> str:
    value = query_url or next((_value(p) for p in params.get("url") or []), None)
    if not isinstance(value, str) or not value:
        raise InvalidRequest("url: the PlanDefinition's canonical url is required (query or Parameters.url)", field="url")
    return value


def choose_hook(plan: Plan, params: dict[str, list[dict]]) -> str:
    given = next((_value(p) for p in params.get("hook") or []), None)
    if given is None:
        return "order-sign" if "order-sign" in plan.hooks else plan.hooks[0]
    if given not in plan.hooks:
        raise InvalidRequest(f"Parameters.hook: '{given}' is not a trigger of PlanDefinition/{plan.id} "
                             f"(it answers {', '.join(plan.hooks)})", field="hook")
    return given


def hook_request(service: Service, params: dict[str, list[dict]], today: dt.date) -> dict[str, Any]:
    """The CDS Hooks request the Parameters stand for, with the data Bundle as prefetch."""
    subject = str(_reference(params, "subject", required=True))  # required: never None here
    context: dict[str, Any] = {"userId": _reference(params, "practitioner", required=True),
                               "patientId": subject.split("/", 1)[1]}
    encounter = _reference(params, "encounter", required=False)
    if encounter:
        context["encounterId"] = encounter.split("/", 1)[1]
    if service.hook in ("order-select", "order-sign"):
        orders = _bundle(params, "draftOrders")
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in orders]}
        if service.hook == "order-select":
            given = [_value(p) for p in params.get("selections") or []]
            context["selections"] = given or [f"{r.get('resourceType')}/{r.get('id')}" for r in orders]
    data = _bundle(params, "data")
    return {"hook": service.hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_from_data(service.prefetch, context, data, today)}


def apply(kb: KnowledgeBase, plan: Plan, params: dict[str, list[dict]], now: dt.datetime,
          fetch: FetchSettings) -> dict[str, Any]:
    hook = choose_hook(plan, params)
    service = next(s for s in kb.services.values() if s.plan is plan and s.hook == hook)
    body = hook_request(service, params, now.astimezone(dt.timezone.utc).date())
    cards = hooks.call(kb, service, body, now, fetch).response["cards"]
    return care_plan(kb, plan, hook, body["context"], cards, now)


def care_plan(kb: KnowledgeBase, plan: Plan, hook: str, context: dict, cards: list[dict],
              now: dt.datetime) -> dict[str, Any]:
    canonical = plan.url + (f"|{plan.version}" if plan.version else "")
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    links: dict[str, Any] = {"subject": {"reference": f"Patient/{context['patientId']}"}}
    if context.get("encounterId"):
        links["encounter"] = {"reference": f"Encounter/{context['encounterId']}"}
    author = {"reference": context["userId"]}
    proposed: list[dict] = []
    actions = [_action(card, _artifact_action(kb, plan, hook, card), proposed) for card in cards]
    group = {"resourceType": "RequestGroup", "id": "recommendations", "instantiatesCanonical": [canonical],
             "status": "draft", "intent": "proposal", **links, "authoredOn": stamp, "author": author}
    if actions:
        group["action"] = actions
    return {"resourceType": "CarePlan", "id": str(uuid.uuid4()), "contained": [group, *proposed],
            "instantiatesCanonical": [canonical], "status": "draft", "intent": "proposal", **links,
            "created": stamp, "author": author, "activity": [{"reference": {"reference": "#recommendations"}}]}


def _artifact_action(kb: KnowledgeBase, plan: Plan, hook: str, card: dict) -> dict:
    """The PlanDefinition action (as authored) that made this card: its priority and documentation."""
    code = ((card.get("source") or {}).get("topic") or {}).get("code")
    action = next((a for a in plan.actions if a.code.get("code") == code and hook in a.hooks), None)
    match = _ACTION.match(action.element) if action is not None else None
    if match is None:
        # Not an action this PlanDefinition authored at its top level (a site's card, a
        # nested action): the RequestGroup action is made from the card alone, never a 500.
        return {}
    return kb.artifacts[plan.url].resource["action"][int(match.group(1))]


_PRIORITY = {indicator: priority for priority, indicator in reversed(INDICATOR.items())}  # info -> routine, ...


def _action(card: dict, authored: dict, proposed: list[dict]) -> dict[str, Any]:
    action: dict[str, Any] = {"id": card["uuid"], "title": card["summary"]}
    if card.get("detail"):
        action["description"] = card["detail"]
    # the card's own indicator: a bundle's comes from its fired members, a dynamic one from the data
    priority = _PRIORITY.get(card.get("indicator", "")) or authored.get("priority")
    if priority:
        action["priority"] = priority
    topic = card["source"]["topic"]
    members = [m for m in (card.get("extension") or {}).get(RECOMMENDATIONS_KEY, []) if m != topic.get("code")]
    # the topic first, then a bundled card's members (the recommendations it reports)
    action["code"] = [{"coding": [topic]}] + [{"coding": [{"system": topic.get("system"), "code": m}]} for m in members]
    if authored.get("documentation"):
        action["documentation"] = authored["documentation"]
    if card.get("selectionBehavior"):
        action["selectionBehavior"] = card["selectionBehavior"]
    nested = []
    for suggestion in card.get("suggestions") or []:
        for change in suggestion["actions"]:
            resource = {**change["resource"], "id": f"proposal-{len(proposed) + 1}"}
            proposed.append(resource)
            nested.append({"id": suggestion["uuid"], "title": suggestion["label"],
                           "description": change.get("description") or suggestion["label"],
                           "resource": {"reference": f"#{resource['id']}"}})
    if nested:
        action["action"] = nested
    return action
