"""UCUM unit conversion through ucumvert (pint), one cached parse per unit string and one
cached factor per unit pair.

ucumvert parses a unit in about a millisecond, too slow for the request path, so each
unit is parsed once and each (from, to) pair converted once, and the result is kept.
A failure is kept too (as its message): a record with a unit that does not parse, or
does not convert, would otherwise be parsed again on every request that reads it.
`unit_parse_count()` counts the parses, so a test can prove a warm path parses nothing.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from functools import lru_cache
from typing import Any

from cds_service.errors import ArtifactError

_lock = threading.Lock()
_registry = None
_parses = 0


class UnitError(ArtifactError):
    """A unit is not valid UCUM or the two units measure different things."""


def _ureg():
    global _registry
    with _lock:
        if _registry is None:
            from ucumvert import PintUcumRegistry

            _registry = PintUcumRegistry()
    return _registry


def warm_up() -> None:
    """Build the UCUM registry now (it takes most of a second) rather than on a request."""
    _ureg()


def unit_parse_count() -> int:
    """How many times a UCUM unit string has been parsed in this process (cache misses)."""
    return _parses


class _Failure(str):
    """A cached failure: the message a UnitError is raised with."""


@lru_cache(maxsize=4096)
def _parsed(unit: str) -> Any:
    """The pint unit of a UCUM string, or a _Failure; each string is parsed once."""
    global _parses
    ureg = _ureg()
    with _lock:
        _parses += 1
    try:
        return ureg.from_ucum(unit)
    except Exception as exc:  # ucumvert raises lark and pint errors of many kinds
        return _Failure(f"'{unit}' is not a valid UCUM unit: {exc}")


@lru_cache(maxsize=4096)
def _factor(from_unit: str, to_unit: str) -> Decimal | _Failure:
    if from_unit == to_unit:
        return Decimal(1)
    source, target = _parsed(from_unit), _parsed(to_unit)
    for parsed in (source, target):
        if isinstance(parsed, _Failure):
            return _Failure(f"cannot convert '{from_unit}' to '{to_unit}': {parsed}")
    try:
        factor = (1 * source).to(target).magnitude
    except Exception as exc:  # pint: dimensionality errors and others
        return _Failure(f"cannot convert '{from_unit}' to '{to_unit}': {exc}")
    return Decimal(repr(float(factor)))


def conversion_factor(from_unit: str, to_unit: str) -> Decimal:
    """Factor f such that value[from_unit] * f = value[to_unit]; raises UnitError.

    A new UnitError each time: re-raising one cached instance would grow its traceback."""
    result = _factor(from_unit, to_unit)
    if isinstance(result, _Failure):
        raise UnitError(str(result))
    return result


def convert(value: Decimal | float | int, from_unit: str, to_unit: str) -> Decimal:
    """Convert value from one UCUM unit to another; raises UnitError."""
    factor = conversion_factor(from_unit, to_unit)
    result = Decimal(str(value)) * factor
    # Conversions like 4 g/L -> mg/dL give 399.99999999 through floats; 12 digits is plenty.
    return result.quantize(Decimal("1.000000000")).normalize() if result else result


def check_unit(unit: str) -> None:
    """Raise UnitError unless unit parses as UCUM (used to validate artifacts at load)."""
    parsed = _parsed(unit)
    if isinstance(parsed, _Failure):
        raise UnitError(str(parsed))
