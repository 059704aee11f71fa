"""JSON Schema validation of CDS Hooks requests and responses (validators built once).

Two validators per schema, each built once per process:

* the reference validator (jsonschema, Python): the authority, and the source of every
  message a 400 or a dropped card names;
* a compiled one (jsonschema_rs: the schema compiled once into native code, formats
  checked): the check of a request, of its context and the egress check of the cards of
  every call are each one pass of it, a few microseconds. Only what it refuses goes to the
  reference validator (the response card by card), which decides and says why. So a
  conformant call never walks a schema in Python; a non-conformant card or request is
  still refused, with the reference's message.

`check_counts()` says how often each was built and how often the reference validator ran
on cards: the regression test (tests/test_card_check.py) holds that at zero per call.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cds_service.errors import InvalidRequest

log = logging.getLogger(__name__)

# "reference_built", "compiled_built": validators built; "reference_card_checks",
# "reference_body_checks": cards and bodies walked by the reference validator (only after
# the compiled one refused them)
_counts: Counter[str] = Counter()


def check_counts() -> dict[str, int]:
    """How often validators were built and the reference validator checked a card."""
    return dict(_counts)


@cache
def schema(name: str) -> dict[str, Any]:
    """A bundled schema, checked against the 2020-12 metaschema (once)."""
    loaded = json.loads(resources.files("cds_service.schemas").joinpath(f"{name}.json").read_text())
    Draft202012Validator.check_schema(loaded)
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    _counts["reference_built"] += 1
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def compiled(name: str) -> Any:
    """The schema compiled once (jsonschema_rs), formats validated like the reference's."""
    _counts["compiled_built"] += 1
    return jsonschema_rs.validator_for(schema(name), validate_formats=True)


def warm_up() -> None:
    """Build the validators of the hook calls now, at load, rather than on the first call."""
    for name in ("request", "response", "context-patient-view", "context-order-select", "context-order-sign"):
        validator(name)
        compiled(name)


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
    """Raise InvalidRequest naming the first field that breaks schema `name`.

    The compiled validator first (a few microseconds, where the reference walks a request
    in most of a millisecond); only a body it refuses goes to the reference validator,
    which decides and names the field."""
    try:
        if compiled(name).is_valid(instance):
            return
    except ValueError:  # not JSON: the reference decides
        pass
    _counts["reference_body_checks"] += 1
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
    """Problems of one card against the 2.0 response schema, by the reference validator."""
    _counts["reference_card_checks"] += 1
    return response_errors({"cards": [card]})


def refused_cards(cards: list[dict[str, Any]]) -> dict[int, list[str]]:
    """The cards the 2.0 response schema refuses (position -> problems; {} for none).

    One pass of the compiled validator over the whole response; only if it refuses does
    the reference validator check each card (it decides, and names the problems)."""
    if not cards:
        return {}
    try:
        if compiled("response").is_valid({"cards": cards}):
            return {}
    except ValueError:  # a value that is not JSON (jsonschema_rs raises): the reference decides
        pass
    refused = {}
    for position, card in enumerate(cards):
        errors = card_errors(card)
        if errors:
            refused[position] = errors
    return refused
