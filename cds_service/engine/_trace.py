"""The explain trace: why each card did or did not fire, and where the data came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_service.engine._context import RequestData
from cds_service.engine._evaluate import CardResult, PlanResult
from cds_service.fhirpath import codings, element_values
from cds_service.knowledge import CardAction, Terminology

EXPLAIN_KEY = "org.myeloma-cds.explain"
_CODE_PATHS = ("code", "medication", "vaccineCode")
_MAX_UNMATCHED = 200


def build(
    service_id: str,
    data: RequestData,
    reports: Mapping[str, dict[str, Any]],
    received: Mapping[str, list[dict]],
    result: PlanResult,
    terminology: Terminology,
) -> dict[str, Any]:
    """The trace of one call: `reports` says where each data requirement came from (the
    data layer's report, as JSON), `received` what arrived per key, before retrieval."""
    return {
        "service": service_id,
        "hook": data.hook,
        "planDefinition": result.plan.url + (f"|{result.plan.version}" if result.plan.version else ""),
        "now": data.now.isoformat(),
        "dataRequirements": dict(reports),
        "triggerOrders": [f"{o.get('resourceType')}/{o.get('id')}" for o in data.selections],
        "variables": {name: outcome.as_dict() for name, outcome in result.variables.items()},
        "actions": [_action(card, data.hook) for card in result.cards],
        "notes": list(dict.fromkeys(result.notes)),
        "unmatchedCodes": unmatched_codes(data, received, terminology),
    }


def _action(card: CardResult, hook: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "code": card.code,
        "fired": card.fired,
        "element": card.action.element,
        "conditions": [o.as_dict() for o in card.outcomes],
    }
    if card.action.is_bundle:
        # Every member, fired or not (the card lists only those that fired); a member is
        # "not evaluated" when the bundle's own conditions did not hold, or not on this hook.
        evaluated = {m.code: m for m in card.members}
        entry["members"] = [
            _action(evaluated[m.code.get("code", "")], hook) if m.code.get("code", "") in evaluated
            else {"code": m.code.get("code"), "fired": False, "element": m.element, "conditions": [],
                  "note": _not_evaluated(m, hook)}
            for m in card.action.members]
    return entry


def _not_evaluated(member: CardAction, hook: str) -> str:
    if hook not in member.hooks:
        return f"not evaluated: it does not run on {hook}"
    return "not evaluated: the bundle's conditions do not hold"


def unmatched_codes(data: RequestData, received: Mapping[str, list[dict]], terminology: Terminology) -> list[dict[str, Any]]:
    """Codes in the draft orders and the data received that no loaded value set holds."""
    found: dict[tuple, dict[str, Any]] = {}
    sources = [("draftOrders", data.draft_orders)] + list(received.items())
    for where, resources in sources:
        for resource in resources:
            for path in _CODE_PATHS:
                for value in element_values(resource, path):
                    for system, code in codings(value):
                        if terminology.is_known_code(system, code):
                            continue
                        key = (system, code, resource.get("resourceType"), path)
                        entry = found.setdefault(key, {
                            "system": system, "code": code,
                            "resourceType": resource.get("resourceType"), "element": path, "in": [],
                        })
                        if where not in entry["in"]:
                            entry["in"].append(where)
                        if len(found) >= _MAX_UNMATCHED:
                            return list(found.values())
    return list(found.values())
