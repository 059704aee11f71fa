"""Boolean nodes compiled to three-valued closures: `fn(ctx, data) -> True | False | None`.

Most of our conditions are and/or chains of `%x.exists()`, `%y.empty()`, `.not()` and
`code.memberOf('...')`. As list closures (fhirpath/_compile.py) every step builds a one-item
list, every operand is typed again (make_param's Boolean check) and every operator goes
through fhirpathpy's and_op/or_op (and a user function through its wrapper). A node that
can only be a boolean or empty is compiled here instead to a closure that answers True,
False or None (empty), and the logic operators combine those directly; only the outermost
boolean node builds its list. An operand that may be anything else (a variable holding a
boolean, a comparison) is typed exactly as make_param types it, with the same errors. The
same short-circuit rules as the list closures apply (FHIRPath 6.5: `false and X`, `true or
X`, `false implies X`), and the same `$this` writes, so functions evaluated later in the
expression see the context they saw before.
tests/test_fhirpath_speedups.py compares every scenario with fhirpathpy's interpreter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fhirpathpy.engine import check_boolean_param, util
from fhirpathpy.engine.util import get_data

Truth = Callable[[dict, Any], Any]  # (ctx, data) -> True, False or None (the empty collection)
Compiled = Callable[[dict, Any], Any]
# The registry key of a user function that answers True, False or [] from its input's plain
# values and literal arguments (memberOf, convertsToUnit): `X.f('literal')` is then fused.
PLAIN_BOOLEAN = "plainBoolean"


def as_list(truth: Truth) -> Compiled:
    """The list closure of a boolean node: [True], [False] or []."""

    def boolean(ctx: dict, data: Any) -> list:
        value = truth(ctx, data)
        return [] if value is None else [value]

    return boolean


def typed(compiled: Compiled) -> Truth:
    """Any node as an and/or operand: make_param's ["Boolean"] typing of its list."""

    def operand(ctx: dict, data: Any) -> Any:
        result = compiled(ctx, data)
        if len(result) == 1 and (result[0] is True or result[0] is False):
            return result[0]
        if not result:
            return None
        if len(result) > 1:
            raise Exception("Unexpected collection" + json.dumps(result) + "; expected singleton of type Boolean")
        return check_boolean_param(result[0])

    return operand


def exists(compiled: Compiled) -> Truth:
    """`X.exists()`: exists_macro's `not is_empty(X)`."""

    def exists_(ctx: dict, data: Any) -> Any:
        value = compiled(ctx, data)
        return not (isinstance(value, list) and not value)

    return exists_


def empty(compiled: Compiled) -> Truth:
    """`X.empty()`: empty_fn's is_empty of X as a collection."""

    def empty_(ctx: dict, data: Any) -> Any:
        value = compiled(ctx, data)
        return not (value if isinstance(value, list) else util.arraify(value))

    return empty_


def variable_exists(name: str, lookup: Callable[[dict, str], list]) -> Truth:
    """`%name.exists()` without building the variable's list."""

    def variable_exists_(ctx: dict, data: Any) -> Any:
        try:
            value = ctx["vars"][name]
        except KeyError:
            return lookup(ctx, name)  # raises its error
        return bool(value) if isinstance(value, list) else value is not None

    return variable_exists_


def variable_empty(name: str, lookup: Callable[[dict, str], list]) -> Truth:
    """`%name.empty()` likewise."""

    def variable_empty_(ctx: dict, data: Any) -> Any:
        try:
            value = ctx["vars"][name]
        except KeyError:
            return lookup(ctx, name)
        return not value if isinstance(value, list) else value is None

    return variable_empty_


def plain_boolean(target: Compiled, fn: Callable[..., Any], argument: str) -> Truth:
    """`X.f('literal')` of a PLAIN_BOOLEAN user function: what the compiled call does (X, then
    fhirpathpy's user-function wrapper, which hands `fn` the plain values), without the
    parameter closure, the wrapper and the lists. The literal parameter's only side effect
    sets `$this` to its own value (to the root when it is absent), which changes nothing
    here: a three-valued closure runs under a logic operator, where() or iif(), and each of
    them has set `$this` before."""

    def call_(ctx: dict, data: Any) -> Any:
        items = target(ctx, data)
        value = fn([get_data(item) for item in items], argument)
        return value if value is True or value is False else None

    return call_


def negation(truth: Truth) -> Truth:
    """`X.not()` of a boolean node: not_fn of [b] is [not b], of [] is []."""

    def not_(ctx: dict, data: Any) -> Any:
        value = truth(ctx, data)
        return None if value is None else not value

    return not_


def logic(op: str, left: Truth, right: Truth) -> Truth:
    """`and`, `or`, `implies`, `xor` in three-valued logic, as and_op, or_op, implies_op and
    xor_op answer; the right operand is skipped once the left decides (not when eager).

    `and` and `or` are one closure: the value that decides (false for `and`, true for `or`)
    wins from either side, else empty wins, else the other value. `A implies B` is
    `(not A) or B` in the same logic (FHIRPath 6.5's table)."""
    if op == "xor":
        def xor_(ctx: dict, data: Any) -> Any:
            ctx["$this"] = data
            a = left(ctx, data)
            ctx["$this"] = data
            b = right(ctx, data)
            return None if a is None or b is None else a is not b

        return xor_
    decided = op != "and"
    negate = op == "implies"

    def connective(ctx: dict, data: Any) -> Any:
        ctx["$this"] = data
        a = left(ctx, data)
        if negate and a is not None:
            a = not a
        if a is decided and not ctx["eager"]:
            return decided
        ctx["$this"] = data
        b = right(ctx, data)
        if a is decided or b is decided:
            return decided
        return None if a is None or b is None else not decided

    return connective
