"""Apply an ActivityDefinition to the patient: the resource a suggestion proposes.

Follows the FHIR $apply mapping for the kinds used here (ServiceRequest,
MedicationRequest and a few others): the definition's code or product, dosage,
intent and priority are copied; subject, encounter, requester and authoredOn come from
the hook context; dynamicValue expressions then set any other element.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from cds_service.engine._context import Outcome, RequestData
from cds_service.fhirpath import Environment, EvaluationError, Evaluator, plain
from cds_service.knowledge import ActivityDefinition, element_path_segments


def apply(
    definition: ActivityDefinition,
    evaluator: Evaluator,
    env: Environment,
    data: RequestData,
    outcomes: list[Outcome],
) -> dict[str, Any]:
    ad = definition.resource
    kind = definition.kind
    resource: dict[str, Any] = {"resourceType": kind, "status": "draft"}
    if kind in ("ServiceRequest", "MedicationRequest", "CommunicationRequest", "DeviceRequest", "NutritionOrder", "Task"):
        resource["intent"] = ad.get("intent", "proposal")
    canonical = definition.url + (f"|{definition.version}" if definition.version else "")
    if kind == "Task":
        resource["instantiatesCanonical"] = canonical
    else:
        resource["instantiatesCanonical"] = [canonical]
    if ad.get("priority"):
        resource["priority"] = ad["priority"]
    _copy_definition(kind, ad, resource)
    _link_context(kind, resource, data)
    for path, expr in definition.dynamic:
        try:
            value = plain(evaluator.run(expr, env))
        except EvaluationError as exc:
            outcomes.append(Outcome(f"{definition.url}#dynamicValue[{path}]", expr.source, error=str(exc)))
            continue
        if value:
            set_path(resource, path, value[0] if len(value) == 1 else value)
    return resource


def _copy_definition(kind: str, ad: dict, resource: dict) -> None:
    if kind == "MedicationRequest":
        if ad.get("productCodeableConcept"):
            resource["medicationCodeableConcept"] = ad["productCodeableConcept"]
        if ad.get("dosage"):
            resource["dosageInstruction"] = ad["dosage"]
    elif kind == "ImmunizationRecommendation":
        resource.pop("status", None)
        resource["recommendation"] = [{"vaccineCode": [ad["code"]]}] if ad.get("code") else []
    elif ad.get("code"):
        resource["code"] = ad["code"]
    if kind == "ServiceRequest" and ad.get("bodySite"):
        resource["bodySite"] = ad["bodySite"]


def _link_context(kind: str, resource: dict, data: RequestData) -> None:
    patient = data.context.get("patientId")
    subject_key = "patient" if kind in ("ImmunizationRecommendation", "NutritionOrder") else "subject"
    if kind == "Task":
        subject_key = "for"
    if patient:
        resource[subject_key] = {"reference": f"Patient/{patient}"}
    encounter = data.context.get("encounterId")
    if encounter and kind != "ImmunizationRecommendation":
        resource["encounter"] = {"reference": f"Encounter/{encounter}"}
    user = data.context.get("userId")
    if user and kind in ("ServiceRequest", "MedicationRequest", "CommunicationRequest", "DeviceRequest"):
        resource["requester"] = {"reference": user}
    stamp = _stamp(data.now)
    if kind in ("ServiceRequest", "MedicationRequest", "CommunicationRequest", "DeviceRequest"):
        resource["authoredOn"] = stamp
    elif kind == "ImmunizationRecommendation":
        resource["date"] = stamp
    elif kind == "Task":
        resource["authoredOn"] = stamp


@functools.lru_cache(maxsize=64)  # one moment per call, for each of its suggestions
def _stamp(now: dt.datetime) -> str:
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def set_path(resource: dict, path: str, value: Any) -> None:
    """Set an element path (checked at load: names and [n] indexes), creating what is missing."""
    node: Any = resource
    parts = element_path_segments(path)
    for i, (name, index) in enumerate(parts):
        last = i == len(parts) - 1
        if index is None:
            if last:
                node[name] = value
            else:
                node = node.setdefault(name, {})
            continue
        items = node.setdefault(name, [])
        while len(items) <= index:
            items.append({})
        if last:
            items[index] = value
        else:
            node = items[index]
