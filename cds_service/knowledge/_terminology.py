"""Value set expansion at load time and indexed membership tests at request time.

A ValueSet is expanded once into `ExpandedValueSet`: a dict from code system to a frozen
set of codes, so `memberOf` costs a dict and a set lookup. Supported definitions:
compose.include/exclude with explicit concepts, a whole CodeSystem we hold, nested
include.valueSet (intersected within one include, as FHIR says), and expansion.contains.
include.filter needs a terminology server and is refused at load.

NDC codes arrive in many layouts (4-4-2, 5-3-2, 5-4-1, 11 digits, with or without the
package segment); they are compared as the 9-digit labeler+product part of the 11-digit
5-4-2 form, so a value set lists each product once and matches every package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service import fhirpath
from cds_service.errors import ArtifactError

NDC = "http://hl7.org/fhir/sid/ndc"

# Extensions the project puts on ValueSet concepts (see README, "Terminology status").
EXT_SOURCE = "/StructureDefinition/concept-source"
EXT_UNVERIFIED = "/StructureDefinition/concept-unverified"


class ExpansionError(ArtifactError):
    def __init__(self, element: str, message: str):
        self.element = element
        super().__init__(message)


def ndc_product(code: str) -> str:
    """The 9-digit labeler+product part of an NDC in any common layout, else the input."""
    parts = code.strip().split("-")
    if len(parts) in (2, 3) and all(p.isdigit() for p in parts):
        labeler, product = parts[0].zfill(5), parts[1].zfill(4)
        if len(labeler) == 5 and len(product) == 4:
            return labeler + product
        return code
    if code.isdigit() and len(code) in (9, 11):
        return code[:9]
    return code


def normalise(system: str | None, code: str) -> str:
    return ndc_product(code) if system == NDC else code


@dataclass(frozen=True)
class Concept:
    system: str
    code: str
    display: str | None = None
    source: str | None = None
    unverified: bool = False


@dataclass
class ExpandedValueSet:
    url: str
    name: str
    codes: dict[str, frozenset[str]] = field(default_factory=dict)
    concepts: list[Concept] = field(default_factory=list)

    def contains(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
        members = self.codes.get(system)  # normalise() written out: this is called per coding tested
        return members is not None and (ndc_product(code) if system == NDC else code) in members

    def __len__(self) -> int:
        return len(self.concepts)

    def __bool__(self) -> bool:  # an empty value set is still a value set
        return True

    def display(self, system: str, code: str) -> str | None:
        for concept in self.concepts:
            if concept.system == system and concept.code == code:
                return concept.display
        return None


def _ext_value(element: Mapping[str, Any], suffix: str) -> Any:
    for ext in element.get("extension", []) or []:
        if ext.get("url", "").endswith(suffix):
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def _concept(system: str, raw: Mapping[str, Any], fallback_display: str | None = None) -> Concept:
    return Concept(
        system=system,
        code=raw["code"],
        display=raw.get("display") or fallback_display,
        source=_ext_value(raw, EXT_SOURCE),
        unverified=bool(_ext_value(raw, EXT_UNVERIFIED)),
    )


class Terminology:
    """All ValueSets and CodeSystems of the knowledge base, expanded and indexed; the unit
    maps (ConceptMaps) and the CodeSystem of result strings, for the FHIRPath functions."""

    def __init__(self, value_sets: Mapping[str, dict], code_systems: Mapping[str, dict],
                 unit_map: fhirpath.UnitMap | None = None, result_text_system: str | None = None):
        self.unit_map = unit_map or fhirpath.UnitMap()
        # resultReading() looks a result string up as a code of this system (when it is loaded)
        self.result_text_system = result_text_system if result_text_system in code_systems else None
        self._raw_value_sets = value_sets
        self._code_systems = code_systems
        self._expanded: dict[str, ExpandedValueSet] = {}
        self._in_progress: set[str] = set()
        self._all_codes: dict[str, set[str]] = {}
        self._displays: dict[tuple[str, str], str] | None = None

    # -- building -----------------------------------------------------------------
    def expand_all(self) -> Iterator[tuple[str, ExpansionError]]:
        """Expand every value set; yields (url, error) for each one that cannot be."""
        for url in self._raw_value_sets:
            try:
                self.expand(url)
            except ExpansionError as exc:
                yield url, exc
        for expanded in self._expanded.values():
            for system, codes in expanded.codes.items():
                self._all_codes.setdefault(system, set()).update(codes)
        for url, cs in self._code_systems.items():
            for concept in _walk_concepts(cs.get("concept", [])):
                self._all_codes.setdefault(url, set()).add(concept["code"])

    def expand(self, url: str) -> ExpandedValueSet:
        if url in self._expanded:
            return self._expanded[url]
        if url not in self._raw_value_sets:
            raise ExpansionError("url", f"unknown ValueSet '{url}'")
        if url in self._in_progress:
            raise ExpansionError("compose.include.valueSet", f"ValueSet '{url}' includes itself")
        self._in_progress.add(url)
        try:
            vs = self._raw_value_sets[url]
            concepts = self._expand_definition(vs)
        finally:
            self._in_progress.discard(url)
        expanded = ExpandedValueSet(url=url, name=vs.get("name") or vs.get("id") or url)
        seen: set[tuple[str, str]] = set()
        index: dict[str, set[str]] = {}
        for concept in concepts:
            key = (concept.system, concept.code)
            if key in seen:
                continue
            seen.add(key)
            expanded.concepts.append(concept)
            index.setdefault(concept.system, set()).add(normalise(concept.system, concept.code))
        expanded.codes = {system: frozenset(codes) for system, codes in index.items()}
        self._expanded[url] = expanded
        return expanded

    def _expand_definition(self, vs: Mapping[str, Any]) -> list[Concept]:
        if vs.get("expansion", {}).get("contains"):
            return list(_walk_contains(vs["expansion"]["contains"]))
        compose = vs.get("compose") or {}
        included: list[Concept] = []
        for i, include in enumerate(compose.get("include", [])):
            included.extend(self._expand_include(include, f"compose.include[{i}]"))
        excluded: set[tuple[str, str]] = set()
        for i, exclude in enumerate(compose.get("exclude", [])):
            for c in self._expand_include(exclude, f"compose.exclude[{i}]"):
                excluded.add((c.system, normalise(c.system, c.code)))
        return [c for c in included if (c.system, normalise(c.system, c.code)) not in excluded]

    def _expand_include(self, include: Mapping[str, Any], element: str) -> list[Concept]:
        if include.get("filter"):
            raise ExpansionError(
                f"{element}.filter",
                "include.filter needs a terminology server; list the concepts explicitly",
            )
        nested = [self._expand_nested(u, f"{element}.valueSet") for u in include.get("valueSet", [])]
        system = include.get("system")
        if system:
            candidates = self._system_concepts(system, include, element)
            for other in nested:
                candidates = [c for c in candidates if other.contains(c.system, c.code)]
            return candidates
        if not nested:
            raise ExpansionError(element, "an include needs a system or a valueSet")
        first, rest = nested[0], nested[1:]
        return [c for c in first.concepts if all(o.contains(c.system, c.code) for o in rest)]

    def _expand_nested(self, url: str, element: str) -> ExpandedValueSet:
        if url not in self._raw_value_sets:
            raise ExpansionError(element, f"includes unknown ValueSet '{url}'")
        return self.expand(url)

    def _system_concepts(self, system: str, include: Mapping[str, Any], element: str) -> list[Concept]:
        cs = self._code_systems.get(system)
        displays = {c["code"]: c.get("display") for c in _walk_concepts(cs.get("concept", []))} if cs else {}
        if include.get("concept"):
            return [_concept(system, c, displays.get(c["code"])) for c in include["concept"]]
        if cs is None:
            raise ExpansionError(
                element,
                f"includes all of '{system}', which is not a CodeSystem held here; list the concepts",
            )
        return [_concept(system, c) for c in _walk_concepts(cs.get("concept", []))]

    # -- lookups --------------------------------------------------------------------
    def get(self, url: str) -> ExpandedValueSet | None:
        return self._expanded.get(url)

    def __contains__(self, url: object) -> bool:
        return url in self._raw_value_sets

    def value_sets(self) -> Iterable[ExpandedValueSet]:
        return self._expanded.values()

    def is_known_code(self, system: str | None, code: str | None) -> bool:
        """True when the code is in any value set or CodeSystem held (for the trace)."""
        if not system or not code:
            return False
        return normalise(system, code) in self._all_codes.get(system, ())

    def display(self, system: str | None, code: str) -> str | None:
        """The display of a code: its CodeSystem's, else the first value set listing it."""
        if not system:
            return None
        found = self.code_display(system, code)
        if found:
            return found
        if self._displays is None:
            self._displays = {}
            for expanded in self._expanded.values():
                for concept in expanded.concepts:
                    if concept.display:
                        self._displays.setdefault((concept.system, normalise(concept.system, concept.code)), concept.display)
        return self._displays.get((system, normalise(system, code)))

    def code_display(self, system: str, code: str) -> str | None:
        cs = self._code_systems.get(system)
        if cs:
            for concept in _walk_concepts(cs.get("concept", [])):
                if concept["code"] == code:
                    return concept.get("display")
        return None


def _walk_concepts(concepts: list[dict]) -> Iterator[dict]:
    for concept in concepts:
        yield concept
        yield from _walk_concepts(concept.get("concept", []))


def _walk_contains(contains: list[dict]) -> Iterator[Concept]:
    for item in contains:
        if item.get("code") and item.get("system") and not item.get("abstract"):
            yield _concept(item["system"], item)
        yield from _walk_contains(item.get("contains", []))
