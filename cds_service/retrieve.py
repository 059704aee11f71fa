"""Apply a data requirement to the resources at hand: type, patient, codes, dates, order.

The EHR's answer to a prefetch template is never trusted to be filtered: this is run on
every requirement's data, prefetched or fetched, and gives FHIRPath a small collection,
newest first. Pure functions; no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .fhirdata import codings, element_values, first_date, subject_reference
from .model import CodeFilter, DataRequirement, DateFilter


@dataclass
class Retrieved:
    resources: list[dict]
    received: int = 0
    other_patient: int = 0


def retrieve(
    requirement: DataRequirement,
    resources: list[dict],
    today: dt.date,
    patient_id: str,
) -> Retrieved:
    kept: list[dict] = []
    other = 0
    for resource in resources:
        if resource.get("resourceType") != requirement.type:
            continue
        if not _same_patient(resource, patient_id):
            other += 1
            continue
        if all(_code_match(resource, cf) for cf in requirement.code_filters) and all(
            _date_match(resource, df, today) for df in requirement.date_filters
        ):
            kept.append(resource)
    if requirement.sort_paths and len(kept) > 1:
        kept.sort(key=lambda r: first_date(r, requirement.sort_paths) or dt.date.min, reverse=True)
    if requirement.limit:
        kept = kept[: requirement.limit]
    return Retrieved(kept, received=len(resources), other_patient=other)


def _same_patient(resource: dict, patient_id: str) -> bool:
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    ref = subject_reference(resource)
    if ref is None or "Patient/" not in ref:
        return True  # contained, urn:uuid or absent: nothing to compare
    return ref == f"Patient/{patient_id}" or ref.endswith(f"/Patient/{patient_id}")


def _code_match(resource: dict, cf: CodeFilter) -> bool:
    for value in element_values(resource, cf.path):
        for system, code in codings(value):
            if cf.value_set is not None and cf.value_set.contains(system, code):
                return True
            if (system, code) in cf.codes or (None, code) in cf.codes:
                return True
    return False


def _date_match(resource: dict, df: DateFilter, today: dt.date) -> bool:
    when = first_date(resource, df.paths)
    if when is None:
        return False
    if df.days is not None and when < today - dt.timedelta(days=df.days):
        return False
    if df.start and when < dt.date.fromisoformat(df.start[:10]):
        return False
    if df.end and when > dt.date.fromisoformat(df.end[:10]):
        return False
    return True


_MEDICATION_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement", "MedicationDispense")


def resolve_medications(resources: list[dict], pool: list[dict]) -> list[dict]:
    """Give medicationReference records the code of the Medication they point to.

    A record pointing to a contained Medication, or to a Medication elsewhere in the
    request, gets a medicationCodeableConcept copied from it (on a copy of the record),
    so code filters and memberOf() see one shape whatever the EHR sent.
    """
    by_ref = {f"Medication/{r.get('id')}": r for r in pool if r.get("resourceType") == "Medication"}
    result = []
    for resource in resources:
        reference = resource.get("medicationReference")
        ref = reference.get("reference") if isinstance(reference, dict) else None
        if isinstance(ref, str) and ref and resource.get("resourceType") in _MEDICATION_TYPES \
                and "medicationCodeableConcept" not in resource:
            target = _find_medication(ref, resource, by_ref)
            if target is not None and target.get("code"):
                resource = {**resource, "medicationCodeableConcept": target["code"]}
        result.append(resource)
    return result


def _find_medication(ref: str, container: dict, by_ref: dict[str, dict]) -> dict | None:
    if ref.startswith("#"):
        contained = container.get("contained")
        return next((c for c in (contained if isinstance(contained, list) else [])
                     if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    parts = ref.split("/_history")[0].rstrip("/").split("/")
    return by_ref.get("/".join(parts[-2:])) if len(parts) >= 2 else None
