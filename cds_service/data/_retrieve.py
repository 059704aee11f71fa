"""Apply a data requirement to the resources at hand: type, patient, codes, dates, order.

The EHR's answer to a prefetch template is never trusted to be filtered: this is run on
every requirement's data, prefetched or fetched, and gives FHIRPath a small collection,
newest first. Pure functions; no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cds_service.fhirpath import codings, element_values, first_date, subject_reference
from cds_service.knowledge import CodeFilter, DataRequirement, DateFilter


@dataclass
class Retrieved:
    resources: list[dict]
    received: int = 0
    other_patient: int = 0


class Retriever:
    """One request's retrieves.

    Several requirements often read the same records (a key and the windows narrowed
    from it, or identical queries). Each source list is checked for the patient and
    split by type once, indexed by code once per element path, and each code filter is
    answered by testing the distinct codes of the index (dozens), not every record
    (thousands); dates are parsed once per record.
    """

    def __init__(self, today: dt.date, patient_id: str):
        self.today = today
        self.patient_id = patient_id
        self._typed: dict[tuple, tuple[list[dict], int]] = {}
        self._indexes: dict[tuple, dict[tuple, list[int]]] = {}
        self._matches: dict[tuple, tuple[list[dict], set[int]]] = {}
        self._dates: dict[tuple, dt.date | None] = {}

    def run(self, requirement: DataRequirement, resources: list[dict]) -> Retrieved:
        typed, other = self._of_type(resources, requirement.type)
        matched = [self._matching(typed, cf) for cf in requirement.code_filters]
        base = min(matched, key=lambda m: len(m[0]))[0] if matched else typed
        others = [ids for found, ids in matched if found is not base]
        kept = [
            r for r in base
            if all(id(r) in ids for ids in others) and all(self._date_match(r, df) for df in requirement.date_filters)
        ]
        if requirement.sort_paths and len(kept) > 1:
            paths = requirement.sort_paths
            kept.sort(key=lambda r: self._date(r, paths) or dt.date.min, reverse=True)
        if requirement.limit:
            kept = kept[: requirement.limit]
        return Retrieved(kept, received=len(resources), other_patient=other)

    def _of_type(self, resources: list[dict], kind: str) -> tuple[list[dict], int]:
        key = (id(resources), kind)
        cached = self._typed.get(key)
        if cached is None:
            typed = [r for r in resources if r.get("resourceType") == kind]
            same = [r for r in typed if _same_patient(r, self.patient_id)]
            cached = self._typed[key] = (same, len(typed) - len(same))
        return cached

    def _index(self, typed: list[dict], path: str) -> dict[tuple, list[int]]:
        key = (id(typed), path)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = {}
            for position, resource in enumerate(typed):
                for value in element_values(resource, path):
                    for coding in codings(value):
                        positions = index.setdefault(coding, [])
                        if not positions or positions[-1] != position:
                            positions.append(position)
        return index

    def _matching(self, typed: list[dict], cf: CodeFilter) -> tuple[list[dict], set[int]]:
        key = (id(typed), cf.path, id(cf.value_set), cf.codes)
        found = self._matches.get(key)
        if found is None:
            positions: set[int] = set()
            for (system, code), where in self._index(typed, cf.path).items():
                if _code_in(cf, system, code):
                    positions.update(where)
            kept = [typed[p] for p in sorted(positions)]
            found = self._matches[key] = (kept, {id(r) for r in kept})
        return found

    def _date(self, resource: dict, paths: tuple[str, ...]) -> dt.date | None:
        key = (id(resource), paths)
        if key not in self._dates:
            self._dates[key] = first_date(resource, paths)
        return self._dates[key]

    def _date_match(self, resource: dict, df: DateFilter) -> bool:
        when = self._date(resource, df.paths)
        if when is None:
            return False
        if df.days is not None and when < self.today - dt.timedelta(days=df.days):
            return False
        if df.start and when < dt.date.fromisoformat(df.start[:10]):
            return False
        if df.end and when > dt.date.fromisoformat(df.end[:10]):
            return False
        return True


def retrieve(requirement: DataRequirement, resources: list[dict], today: dt.date, patient_id: str) -> Retrieved:
    """One requirement on its own (see Retriever for many over shared records)."""
    return Retriever(today, patient_id).run(requirement, resources)


def _same_patient(resource: dict, patient_id: str) -> bool:
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    ref = subject_reference(resource)
    if ref is None or "Patient/" not in ref:
        return True  # contained, urn:uuid or absent: nothing to compare
    return ref == f"Patient/{patient_id}" or ref.endswith(f"/Patient/{patient_id}")


def _code_in(cf: CodeFilter, system: str | None, code: str) -> bool:
    if cf.value_set is not None and cf.value_set.contains(system, code):
        return True
    return (system, code) in cf.codes or (None, code) in cf.codes
