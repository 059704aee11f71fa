"""Request bodies for API tests."""

from __future__ import annotations

import uuid

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def teclistamab_order(rid: str = "tec1", patient: str = "p1") -> dict:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2619432"}]}}


def order_sign(orders: list[dict] | None = None, patient: str = "p1", **extra) -> dict:
    orders = [teclistamab_order(patient=patient)] if orders is None else orders
    body = {"hook": "order-sign", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/dr-1", "patientId": patient,
                        "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                        "entry": [{"resource": o} for o in orders]}}}
    body.update(extra)
    return body


def empty_prefetch(discovery_entry: dict, patient: dict | None = None) -> dict:
    prefetch = {key: None for key in discovery_entry.get("prefetch", {})}
    if patient is not None:
        prefetch["patient"] = patient
    return prefetch
