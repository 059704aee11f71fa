"""JSON Schema validation of CDS Hooks requests and responses (validators built once)."""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cds_service.errors import InvalidRequest

log = logging.getLogger(__name__)


@cache
def validator(name: str) -> Draft202012Validator:
    text = resources.files("cds_service.schemas").joinpath(f"{name}.json").read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def field_path(error: ValidationError, prefix: str = "") -> str:
    """The dotted path of the field at fault, e.g. context.selections[0]."""
    path = prefix
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator in ("required", "dependentRequired"):
        missing = _missing_property(error)
        if missing:
            path = f"{path}.{missing}" if path else missing
    return path or "(body)"


def _missing_property(error: ValidationError) -> str | None:
    if error.validator == "required":
        for name in error.validator_value:
            if isinstance(error.instance, dict) and name not in error.instance:
                return name
    if error.validator == "dependentRequired":
        for props in error.validator_value.values():
            for name in props:
                if isinstance(error.instance, dict) and name not in error.instance:
                    return name
    return None


def _first_error(name: str, instance: Any) -> ValidationError | None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    return errors[0] if errors else None


def check(name: str, instance: Any, prefix: str = "") -> None:
    """Raise InvalidRequest naming the first field that breaks schema `name`."""
    error = _first_error(name, instance)
    if error is not None:
        field = field_path(error, prefix)
        raise InvalidRequest(f"{field}: {_message(error)}", field=field)


def _message(error: ValidationError) -> str:
    if error.validator == "required":
        return "is required"
    if error.validator == "dependentRequired":
        return "is required when " + ", ".join(k for k in error.validator_value if k in (error.instance or {})) + " is given"
    if error.validator == "pattern":
        return f"{_short(error.instance)} does not have the expected form"
    if error.validator == "const":
        return f"must be {error.validator_value!r}"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        if error.validator_value == ["object", "null"]:
            return "must be null or a FHIR resource (an object with resourceType)"
        return f"must be of type {error.validator_value}"
    if error.validator == "minItems":
        return "must not be empty"
    if error.validator in ("anyOf", "oneOf"):
        return "must be null or a FHIR resource (an object with resourceType)"
    return error.message


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def response_errors(response: dict) -> list[str]:
    return [f"{field_path(e)}: {e.message}" for e in validator("response").iter_errors(response)]


def card_errors(card: dict) -> list[str]:
    """Problems of one card against the 2.0 response schema (checked before it is sent)."""
    return response_errors({"cards": [card]})
