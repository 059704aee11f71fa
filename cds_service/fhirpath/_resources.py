"""Small, fast readers for FHIR JSON (dicts) used on the request path.

These avoid FHIRPath for the work done on whole records (code and date filters of the
retrieves), where fhirpathpy's per-resource cost would dominate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

Coding = tuple[str | None, str]

_CHOICE_SUFFIXES = (
    "CodeableConcept", "Coding", "Reference", "DateTime", "Period", "Instant", "Date",
    "Quantity", "String", "Boolean", "Integer", "Range", "Ratio", "Age", "Timing",
)


@lru_cache(maxsize=1024)
def _candidate_keys(name: str) -> tuple[str, ...]:
    return (name,) + tuple(name + suffix for suffix in _CHOICE_SUFFIXES)


def element_values(resource: Any, path: str) -> list[Any]:
    """Values at a dotted path; a segment also matches its choice-type forms (value[x])."""
    current: list[Any] = [resource]
    for name in path.split("."):
        found: list[Any] = []
        for item in current:
            if not isinstance(item, dict):
                continue
            for key in _candidate_keys(name):
                if key in item:
                    value = item[key]
                    found.extend(value if isinstance(value, list) else [value])
        current = found
        if not current:
            break
    return current


def codings(value: Any) -> Iterator[Coding]:
    """(system, code) pairs of a code, Coding or CodeableConcept value.

    Request data is untrusted: a coding that is not a list, a code that is not a string,
    or a system that is present but not a string yields nothing (it matches no value set
    and is never taken as a code without system).
    """
    if isinstance(value, str):
        yield (None, value)
    elif isinstance(value, dict):
        items = value.get("coding") or [] if "coding" in value else [value]
        for coding in items if isinstance(items, list) else []:
            if not isinstance(coding, dict):
                continue
            system, code = coding.get("system"), coding.get("code")
            if isinstance(code, str) and code and (system is None or isinstance(system, str)):
                yield (system, code)


def parse_date(value: Any) -> dt.date | None:
    """The calendar date of a FHIR date, dateTime, instant or Period (its start).

    The date is taken as written (local to the record), which is how a clinician reads
    "in the last 12 months"; a partial date counts as its first day.
    """
    if isinstance(value, dict):
        value = value.get("start") or value.get("end")
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return dt.date(year, month, day)
    except ValueError:
        return None


def first_date(resource: dict, paths: tuple[str, ...]) -> dt.date | None:
    for path in paths:
        for value in element_values(resource, path):
            parsed = parse_date(value)
            if parsed is not None:
                return parsed
    return None


def reference_of(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def subject_reference(resource: dict) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return ref["reference"]
    return None
