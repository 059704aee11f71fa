"""The unit ConceptMaps: local unit strings to UCUM, and UCUM codes to the text a clinician reads.

Two maps ship, at `{base}/ConceptMap/unit-aliases` and `{base}/ConceptMap/unit-display`.
Each names a site companion through `group.unmapped` (mode other-map), shipped empty,
which a site replaces from its own directory, as it does a value set's `-site` companion.
The maps and every map they name are read together; a string two of them map to
different targets is refused (a site changes a shipped alias by replacing the shipped
map), and so is an alias target that is not valid UCUM: a unit read wrongly would
compare a wrong number against a threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cds_service import fhirpath
from cds_service.errors import Problem
from cds_service.knowledge._model import Artifact

ALIASES = "/ConceptMap/unit-aliases"
DISPLAYS = "/ConceptMap/unit-display"

# Reads one ConceptMap element: (source, value), or (None, (element suffix, message)).
Reader = Callable[[dict], tuple[Any, Any]]


def build(artifacts: Mapping[str, Artifact], base: str) -> tuple[fhirpath.UnitMap, list[Problem]]:
    """The unit map of the loaded ConceptMaps, and the problems found in them."""
    base = base.rstrip("/")
    problems: list[Problem] = []
    aliases = _read_chain(artifacts, base + ALIASES, _alias, problems)
    displays = _read_chain(artifacts, base + DISPLAYS, _display, problems)
    return fhirpath.UnitMap(aliases, displays), problems


def _alias(element: dict) -> tuple[Any, Any]:
    targets = [t for t in element.get("target") or [] if t.get("code")]
    if len(targets) != 1:
        return None, ("target", "needs exactly one target with a UCUM code")
    try:
        fhirpath.check_unit(targets[0]["code"])
    except fhirpath.UnitError as exc:
        return None, ("target[0].code", str(exc))
    return element["code"], targets[0]["code"]


def _display(element: dict) -> tuple[Any, Any]:
    try:
        fhirpath.check_unit(element["code"])
    except fhirpath.UnitError as exc:
        return None, ("code", str(exc))
    texts = [t.get("display") or t.get("code") for t in element.get("target") or []]
    if not texts or not texts[0]:
        return None, ("target", "needs a target with the display a clinician reads")
    return element["code"], texts[0]


def _read_chain(artifacts: Mapping[str, Artifact], root: str, reader: Reader,
                problems: list[Problem]) -> dict[str, str]:
    """Every mapping of the root map and of the maps it names (group.unmapped other-map)."""
    mapped: dict[str, tuple[str, str]] = {}  # source -> (value, the file that maps it)
    queue: list[tuple[str, tuple[Artifact, str] | None]] = [(root, None)]
    seen: set[str] = set()
    while queue:
        url, named_by = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        artifact = artifacts.get(url)
        if artifact is None or artifact.resource.get("resourceType") != "ConceptMap":
            if named_by is not None:
                problems.append(Problem(named_by[0].file, named_by[0].label, named_by[1],
                                        f"ConceptMap '{url}' is not loaded"))
            continue
        queue.extend(_read_map(artifact, reader, mapped, problems))
    return {source: value for source, (value, _) in mapped.items()}


def _read_map(artifact: Artifact, reader: Reader, mapped: dict[str, tuple[str, str]],
              problems: list[Problem]) -> list[tuple[str, tuple[Artifact, str]]]:
    """Adds one map's mappings; returns the maps it names next."""
    named = []
    for g, group in enumerate(artifact.resource.get("group") or []):
        for e, element in enumerate(group.get("element") or []):
            where = f"ConceptMap.group[{g}].element[{e}]"
            _add(artifact, where, element, reader, mapped, problems)
        unmapped = group.get("unmapped") or {}
        if unmapped.get("mode") == "other-map" and unmapped.get("url"):
            named.append((unmapped["url"], (artifact, f"ConceptMap.group[{g}].unmapped.url")))
    return named


def _add(artifact: Artifact, where: str, element: dict, reader: Reader,
         mapped: dict[str, tuple[str, str]], problems: list[Problem]) -> None:
    if not isinstance(element.get("code"), str) or not element["code"].strip():
        problems.append(Problem(artifact.file, artifact.label, f"{where}.code", "is required"))
        return
    source, value = reader(element)
    if source is None:
        suffix, message = value
        problems.append(Problem(artifact.file, artifact.label, f"{where}.{suffix}", message))
        return
    source = source.strip()
    earlier = mapped.get(source)
    if earlier is not None and earlier[0] != value:
        problems.append(Problem(artifact.file, artifact.label, f"{where}.code",
                                f"'{source}' is already mapped to '{earlier[0]}' by {earlier[1]}; "
                                "replace that ConceptMap to change it"))
        return
    mapped.setdefault(source, (value, artifact.file))
