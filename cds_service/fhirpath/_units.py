"""UCUM unit conversion through ucumvert (pint), one cached factor per unit pair.

ucumvert parses a unit in about a millisecond, too slow for the request path, so each
(from, to) pair is converted once and the multiplicative factor is kept.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from functools import lru_cache

from cds_service.errors import ArtifactError

_lock = threading.Lock()
_registry = None


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


@lru_cache(maxsize=4096)
def conversion_factor(from_unit: str, to_unit: str) -> Decimal:
    """Factor f such that value[from_unit] * f = value[to_unit]; raises UnitError."""
    if from_unit == to_unit:
        return Decimal(1)
    ureg = _ureg()
    try:
        source = ureg.from_ucum(from_unit)
        target = ureg.from_ucum(to_unit)
        factor = (1 * source).to(target).magnitude
    except Exception as exc:  # ucumvert raises lark and pint errors of many kinds
        raise UnitError(f"cannot convert '{from_unit}' to '{to_unit}': {exc}") from None
    return Decimal(repr(float(factor)))


def convert(value: Decimal | float | int, from_unit: str, to_unit: str) -> Decimal:
    """Convert value from one UCUM unit to another; raises UnitError."""
    factor = conversion_factor(from_unit, to_unit)
    result = Decimal(str(value)) * factor
    # Conversions like 4 g/L -> mg/dL give 399.99999999 through floats; 12 digits is plenty.
    return result.quantize(Decimal("1.000000000")).normalize() if result else result


def check_unit(unit: str) -> None:
    """Raise UnitError unless unit parses as UCUM (used to validate artifacts at load)."""
    try:
        _ureg().from_ucum(unit)
    except Exception as exc:
        raise UnitError(f"'{unit}' is not a valid UCUM unit: {exc}") from None
