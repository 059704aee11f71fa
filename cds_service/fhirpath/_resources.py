"""Small, fast readers for FHIR JSON (dicts) used on the request path.

These avoid FHIRPath for the work done on whole records (code and date filters of the
retrieves), where fhirpathpy's per-resource cost would dominate.
"""

from __future__ import annotations

import datetime as dt
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


@lru_cache(maxsize=1024)
def _steps(path: str) -> tuple[tuple[tuple[str, ...], frozenset[str]], ...]:
    """Per segment of a dotted path: its candidate keys in order, and as a set."""
    return tuple((keys, frozenset(keys)) for keys in map(_candidate_keys, path.split(".")))


def element_values(resource: Any, path: str) -> list[Any]:
    """Values at a dotted path; a segment also matches its choice-type forms (value[x]).

    On the request path for every record of a retrieve: the keys a record has are
    intersected with a segment's candidates (a record has a few keys, a segment 16
    candidates), and only a record holding several forms walks them in order."""
    current: list[Any] = [resource]
    for keys, candidates in _steps(path):
        found: list[Any] = []
        for item in current:
            if not isinstance(item, dict):
                continue
            hits = candidates.intersection(item)
            if not hits:
                continue
            for key in (hits if len(hits) == 1 else [k for k in keys if k in hits]):
                value = item[key]
                if isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
        current = found
        if not current:
            break
    return current


# A dotted path's entry in _single has no keys. Tested by its emptiness, not by identity with
# a marker: compiled (cds_service/_native.py), a tuple of this shape is a C struct, boxed
# anew wherever it becomes an object, so `is` would never match.
_NOT_SINGLE: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())
_single: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}


def _one_step(path: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """A one-segment path's step (see _steps), or _NOT_SINGLE (no keys) for a dotted one."""
    step = _single.get(path)
    if step is None:
        steps = _steps(path)
        step = _single[path] = steps[0] if len(steps) == 1 else _NOT_SINGLE
    return step


def path_codings(resource: dict, path: str) -> list[Coding]:
    """(system, code) pairs of every value at `path` of a record: what
    `[c for v in element_values(resource, path) for c in codings(v)]` gives, with the
    one-segment paths of the retrieves' code filters ("code", "medication", "status")
    read without the general walk (thousands of records per call)."""
    step = _one_step(path)
    if not step[0]:
        return [c for v in element_values(resource, path) for c in codings(v)]
    keys, candidates = step
    hits = candidates.intersection(resource)
    if not hits:
        return []
    out: list[Coding] = []
    for key in (hits if len(hits) == 1 else [k for k in keys if k in hits]):
        value = resource[key]
        if isinstance(value, list):
            for item in value:
                out += codings(item)
        else:
            out += codings(value)
    return out


def codings(value: Any) -> list[Coding]:
    """(system, code) pairs of a code, Coding or CodeableConcept value.

    Request data is untrusted: a coding that is not a list, a code that is not a string,
    or a system that is present but not a string yields nothing (it matches no value set
    and is never taken as a code without system). A list, not a generator: it is called
    for every record a retrieve indexes.
    """
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    items = value.get("coding") or [] if "coding" in value else [value]
    out: list[Coding] = []
    for coding in items if isinstance(items, list) else ():
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(code, str) and code and (system is None or isinstance(system, str)):
                out.append((system, code))
    return out


def parse_date(value: Any) -> dt.date | None:
    """The calendar date of a FHIR date, dateTime, instant or Period (its start).

    The date is taken as written (local to the record), which is how a clinician reads
    "in the last 12 months"; a partial date counts as its first day.
    """
    if isinstance(value, dict):
        value = value.get("start") or value.get("end")
    if not isinstance(value, str) or len(value) < 4:
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        try:  # the usual YYYY-MM-DD, read in C (only that form: 3.11 also reads week dates)
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            pass
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return dt.date(year, month, day)
    except ValueError:
        return None


def first_date(resource: dict, paths: tuple[str, ...]) -> dt.date | None:
    """The first date at `paths` (element_values order); a one-segment path ("effective",
    "authoredOn": the sort of every dated retrieve) is read without the general walk."""
    for path in paths:
        step = _one_step(path)
        if not step[0] or not isinstance(resource, dict):
            values = element_values(resource, path)
        else:
            keys, candidates = step
            hits = candidates.intersection(resource)
            if not hits:
                continue
            values = []
            for key in (hits if len(hits) == 1 else [k for k in keys if k in hits]):
                value = resource[key]
                if isinstance(value, list):
                    values.extend(value)
                else:
                    values.append(value)
        for value in values:
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
