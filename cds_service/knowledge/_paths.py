"""Element paths an ActivityDefinition's dynamicValue may set: `name` or `name[n]`
segments joined by dots (no FHIRPath functions), each an element of the FHIR model, with
an index wherever the element repeats. Checked at load, so $apply never meets a path it
cannot set."""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

_SEGMENT = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?$")
_COMPLEX = re.compile(r"abc\.([A-Za-z]+)Type\b")


def segments(path: str) -> list[tuple[str, int | None]]:
    """The (element, index) pairs of a path; ValueError for anything else."""
    out = []
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise ValueError(f"unsupported path segment '{segment}' in '{path}': use element names and [n] indexes")
        out.append((match.group(1), int(match.group(2)) if match.group(2) is not None else None))
    return out


def path_problem(kind: str, path: str) -> str | None:
    """Why `path` cannot be set on a resource of type `kind`, or None when it can."""
    try:
        parts = segments(path)
    except ValueError as exc:
        return str(exc)
    model: Any = get_fhir_model_class(kind)
    for i, (name, index) in enumerate(parts):
        field = model.model_fields.get(name) if model is not None else None
        if field is None:
            return f"'{name}' is not an element of {kind if i == 0 else parts[i - 1][0]}"
        annotation = str(field.annotation)
        repeats = "List[" in annotation
        if repeats and index is None:
            return f"'{name}' repeats: give an index, as in {name}[0]"
        if not repeats and index is not None:
            return f"'{name}' does not repeat: drop the [{index}]"
        nested = _COMPLEX.search(annotation)
        model = _model(nested.group(1)) if nested else None
        if model is None and i < len(parts) - 1:
            return f"'{name}' has no elements below it (in '{path}')"
    return None


def _model(name: str) -> Any:
    try:
        return get_fhir_model_class(name)
    except KeyError:
        return None
