"""What the added functions ask of the loaded terminology.

The knowledge layer provides it (its Terminology); this layer imports nothing above it,
so the shapes are protocols here.
"""

from __future__ import annotations

from typing import Protocol

from cds_service.fhirpath._unit_map import UnitMap


class ValueSetLike(Protocol):
    def contains(self, system: str | None, code: str) -> bool: ...


class TerminologyLike(Protocol):
    """memberOf() and resultReading() look value sets up, display() reads displays,
    toUnit() and unitDisplay() read units through the unit maps."""

    def get(self, url: str) -> ValueSetLike | None: ...

    def display(self, system: str | None, code: str) -> str | None: ...

    @property
    def unit_map(self) -> UnitMap: ...

    @property
    def result_text_system(self) -> str | None:
        """The CodeSystem whose codes are result strings (lower case), if one is loaded."""
        ...
