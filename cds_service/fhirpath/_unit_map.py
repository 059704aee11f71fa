"""Local unit strings to UCUM, and UCUM codes to the unit a clinician reads.

Lab feeds send units like "K/uL" that UCUM parses as something else (kelvin per
microlitre), so a Quantity's unit is read through an alias map before any UCUM parse.
The maps are data (ConceptMaps the knowledge layer loads); this module only applies them.

Reading a Quantity's unit: a UCUM-coded Quantity (system UCUM and a code) is taken at its
code; otherwise its unit string, trimmed, is looked up exactly, then ignoring case. A
case-insensitive match is used only when every alias with that spelling agrees on the
target: "G/L" (giga per litre) and "g/L" (gram per litre) differ only by case, and a
lookup must never turn one into the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhirpathpy.engine.nodes import FP_Quantity

UCUM = "http://unitsofmeasure.org"


class UnitMap:
    """Unit aliases (local string -> UCUM code) and displays (UCUM code -> text)."""

    def __init__(self, aliases: Mapping[str, str] | None = None, displays: Mapping[str, str] | None = None):
        self.aliases = dict(aliases or {})
        self.displays = dict(displays or {})
        folded: dict[str, set[str]] = {}
        for source, target in self.aliases.items():
            folded.setdefault(source.casefold(), set()).add(target)
        self._folded = {key: targets.pop() for key, targets in folded.items() if len(targets) == 1}

    def to_ucum(self, unit: str) -> str:
        """The UCUM code a local unit string stands for (the trimmed string when unmapped)."""
        unit = unit.strip()
        found = self.aliases.get(unit)
        if found is None:
            found = self._folded.get(unit.casefold())
        return unit if found is None else found

    def display(self, code: str) -> str | None:
        return self.displays.get(code)


EMPTY = UnitMap()


def quantity_unit(item: Any, units: UnitMap) -> tuple[Any, str | None, str | None]:
    """(value, UCUM unit to convert from, the unit as recorded) of a Quantity, else raises
    TypeError. The UCUM unit is None when the Quantity carries no unit at all."""
    if isinstance(item, FP_Quantity):  # a literal, or a UCUM-coded Quantity fhirpathpy converted
        unit = item.unit.strip("'")
        return item.value, unit, unit
    if not isinstance(item, dict) or item.get("value") is None:
        raise TypeError("not a Quantity")
    recorded = item.get("unit") if isinstance(item.get("unit"), str) and item["unit"].strip() else None
    code = item.get("code") if isinstance(item.get("code"), str) and item["code"].strip() else None
    if item.get("system") == UCUM and code:
        return item["value"], code.strip(), recorded
    local = recorded or code
    return item["value"], (units.to_ucum(local) if local else None), recorded


def unit_display(item: Any, units: UnitMap) -> str | None:
    """The unit as a clinician reads it: the display map's text for the UCUM code, else
    the unit as recorded, else the code."""
    ucum: str | None
    if isinstance(item, str):
        ucum, recorded = units.to_ucum(item), item.strip() or None
    else:
        try:
            _, ucum, recorded = quantity_unit(item, units)
        except TypeError:
            return None
    return (units.display(ucum) if ucum else None) or recorded or ucum
