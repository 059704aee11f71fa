"""Reading a qualitative result (positive, negative, indeterminate) from an Observation.

Which codes and strings mean what is data: three value sets (positive, negative,
indeterminate) named by the caller. A result is read from every source it carries:
interpretation codings, valueCodeableConcept codings, valueString, and the
valueCodeableConcept's text when none of its codings is recognised. A string is trimmed,
lower-cased and looked up as a whole, as a code of the result-text CodeSystem in the value
sets: "weakly reactive" is not "reactive", and no substring ever matches.

How the sources combine: positive and negative together is 'conflicting' (the rules
treat it as positive and say so); else any positive is 'positive', any negative
'negative', any indeterminate 'indeterminate'; nothing readable is 'unreadable'.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cds_service.fhirpath._protocols import ValueSetLike
from cds_service.fhirpath._resources import Coding, codings

READINGS = ("positive", "negative", "indeterminate")


class ResultSets:
    """The three value sets of one call, and the CodeSystem of the result strings."""

    def __init__(self, sets: tuple[ValueSetLike, ValueSetLike, ValueSetLike], text_system: str | None):
        self.sets = dict(zip(READINGS, sets, strict=True))
        self.text_system = text_system

    def of_code(self, system: str | None, code: str) -> set[str]:
        return {reading for reading, vs in self.sets.items() if vs.contains(system, code)}

    def of_text(self, text: Any) -> set[str]:
        if not isinstance(text, str) or not text.strip() or not self.text_system:
            return set()
        return self.of_code(self.text_system, text.strip().lower())


def _coded(concepts: Iterable[Any], sets: ResultSets, unknown: list[Coding]) -> set[str]:
    found: set[str] = set()
    for concept in concepts:
        for system, code in codings(concept) if isinstance(concept, dict) else ():
            matched = sets.of_code(system, code)
            if not matched:
                unknown.append((system, code))
            found |= matched
    return found


def read(observation: Any, sets: ResultSets, unknown: list[Coding]) -> str:
    """One Observation's reading; codings that matched no value set go to `unknown`."""
    if not isinstance(observation, dict):
        return "unreadable"
    interpretation = observation.get("interpretation")
    found = _coded(interpretation if isinstance(interpretation, list) else [], sets, unknown)
    value = observation.get("valueCodeableConcept")
    if isinstance(value, dict):
        from_value = _coded([value], sets, unknown)
        found |= from_value or sets.of_text(value.get("text"))
    found |= sets.of_text(observation.get("valueString"))
    return combine(found)


def combine(found: set[str]) -> str:
    if {"positive", "negative"} <= found:
        return "conflicting"
    return next((reading for reading in READINGS if reading in found), "unreadable")
