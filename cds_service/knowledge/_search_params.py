"""FHIR R4 search parameters for the element paths that data requirements filter on.

This is FHIR's own vocabulary (the SearchParameter definitions), not clinical content:
a dataRequirement may name `searchParam` itself; these defaults fill it in when not.
"""

from __future__ import annotations

_CODE = {
    "code": "code",
    "status": "status",
    "category": "category",
    "class": "class",
    "vaccineCode": "vaccine-code",
    "clinicalStatus": "clinical-status",
    "verificationStatus": "verification-status",
    "intent": "intent",
    "type": "type",
}
_MEDICATION_TYPES = {"MedicationRequest", "MedicationAdministration", "MedicationStatement", "MedicationDispense"}

_DATE = {
    ("Observation", "effective"): "date",
    ("DiagnosticReport", "effective"): "date",
    ("MedicationRequest", "authoredOn"): "authoredon",
    ("MedicationAdministration", "effective"): "effective-time",
    ("MedicationStatement", "effective"): "effective",
    ("MedicationDispense", "whenHandedOver"): "whenhandedover",
    ("Procedure", "performed"): "date",
    ("Condition", "onset"): "onset-date",
    ("Condition", "recordedDate"): "recorded-date",
    ("Immunization", "occurrence"): "date",
    ("ServiceRequest", "authoredOn"): "authored",
    ("Encounter", "period"): "date",
    ("AllergyIntolerance", "recordedDate"): "date",
}

# The element that dates a record of each type, for "newest first" when no dateFilter says.
DEFAULT_DATE_PATHS = {
    "Observation": ("effective", "issued"),
    "DiagnosticReport": ("effective", "issued"),
    "MedicationRequest": ("authoredOn",),
    "MedicationAdministration": ("effective",),
    "MedicationStatement": ("effective", "dateAsserted"),
    "MedicationDispense": ("whenHandedOver",),
    "Procedure": ("performed",),
    "Condition": ("onset", "recordedDate"),
    "Immunization": ("occurrence", "recorded"),
    "ServiceRequest": ("authoredOn", "occurrence"),
    "Encounter": ("period",),
    "AllergyIntolerance": ("recordedDate", "onset"),
}

# Types whose search parameter for the patient is `patient` (every clinical type here).
PATIENT_PARAM = "patient"


def code_param(resource_type: str, path: str) -> str | None:
    if path == "medication" and resource_type in _MEDICATION_TYPES:
        return "code"
    return _CODE.get(path)


def date_param(resource_type: str, path: str) -> str | None:
    return _DATE.get((resource_type, path))
