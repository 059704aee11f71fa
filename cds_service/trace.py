"""The explain trace: why each card did or did not fire, and where the data came from."""

from __future__ import annotations

from typing import Any

from .assemble import Assembled
from .evaluation import PlanResult
from .fhirdata import codings, element_values
from .terminology import Terminology

EXPLAIN_KEY = "org.myeloma-cds.explain"
_CODE_PATHS = ("code", "medication", "vaccineCode")
_MAX_UNMATCHED = 200


def build(service_id: str, assembled: Assembled, result: PlanResult, terminology: Terminology) -> dict[str, Any]:
    return {
        "service": service_id,
        "hook": assembled.data.hook,
        "planDefinition": result.plan.url + (f"|{result.plan.version}" if result.plan.version else ""),
        "now": assembled.data.now.isoformat(),
        "dataRequirements": {key: report.as_dict() for key, report in assembled.reports.items()},
        "triggerOrders": [f"{o.get('resourceType')}/{o.get('id')}" for o in assembled.data.selections],
        "variables": {name: outcome.as_dict() for name, outcome in result.variables.items()},
        "actions": [
            {
                "code": card.action.code.get("code"),
                "fired": card.fired,
                "element": card.action.element,
                "conditions": [o.as_dict() for o in card.outcomes],
            }
            for card in result.cards
        ],
        "notes": list(dict.fromkeys(result.notes)),
        "unmatchedCodes": unmatched_codes(assembled, terminology),
    }


def unmatched_codes(assembled: Assembled, terminology: Terminology) -> list[dict[str, Any]]:
    """Codes in the draft orders and the data received that no loaded value set holds."""
    found: dict[tuple, dict[str, Any]] = {}
    sources = [("draftOrders", assembled.data.draft_orders)] + list(assembled.raw.items())
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
