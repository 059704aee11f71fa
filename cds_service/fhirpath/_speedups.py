"""Speed-ups for fhirpathpy (pinned 2.2.4), installed once; results are unchanged.

Profiling (bench/README.md) showed fhirpathpy re-deriving constant things on every visit
of every AST node: an identifier's quotes stripped by a regex, a string literal unescaped
by nine replaces and two regexes, a number literal re-parsed into a Decimal, and, on
every function call, its ~150-entry function registry merged into a new dict together
with the caller's functions. Our ASTs are built once at load and never change, so:

- literal and identifier values are computed once and kept on the AST node itself
  (a private key, so a reloaded knowledge base brings fresh nodes and no stale cache);
- function calls look the function up in a registry merged once per function table;
- where() evaluates its criterion once per item (fhirpathpy evaluates it twice).

tests/test_fhirpath_speedups.py evaluates the FHIRPath cases and every expression of the
shipped artifacts with and without these, and requires identical results.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

import fhirpathpy.engine as engine
from fhirpathpy.engine import util
from fhirpathpy.engine.evaluators import evaluators
from fhirpathpy.engine.invocations import invocation_registry

from cds_service.errors import IncompatibleLibrary

_CACHED = "_mm_value"
_ORIGINAL = {name: evaluators[name] for name in ("Identifier", "StringLiteral", "NumberLiteral")}
_ORIGINAL_INVOKE = engine.doInvoke
_ORIGINAL_INFIX = engine.infix_invoke
_merged: dict[int, dict[str, dict]] = {}


def _remember(evaluate: Callable) -> Callable:
    def cached(ctx: dict, parent: Any, node: dict) -> list:
        value = node.get(_CACHED)
        if value is None:
            value = node[_CACHED] = evaluate(ctx, parent, node)
        return list(value)  # a fresh list, as the original returns

    return cached


def where_fn(ctx: dict, data: Any, criterion: Callable) -> list:
    if not isinstance(data, list):
        return []
    kept: list = []
    for index, item in enumerate(data):
        ctx["$index"] = index
        result = criterion(item)
        if len(result) > 0 and result[0]:
            if isinstance(item, list):
                kept.extend(item)  # fhirpathpy's flatten of the kept items, inline
            else:
                kept.append(item)
    return kept


def registry_for(user_table: dict) -> dict[str, Any]:
    """fhirpathpy's functions overlaid with ours, merged once per table."""
    merged = _merged.get(id(user_table))
    if merged is None:
        merged = {**invocation_registry, **user_table}  # type: ignore[dict-item]  # untyped library table
        merged["where"] = {**merged["where"], "fn": where_fn}
        _merged[id(user_table)] = merged
    return merged


def _invoke(ctx: dict, fn_name: Any, data: Any, raw_params: Any) -> list:
    registry = ctx.get("registry")
    if registry is None:
        return _ORIGINAL_INVOKE(ctx, fn_name, data, raw_params)
    if isinstance(fn_name, list) and len(fn_name) == 1:
        fn_name = fn_name[0]
    invocation = registry.get(fn_name) if isinstance(fn_name, str) else None
    if invocation is None:
        raise Exception(f"Not implemented: {fn_name}")
    if "nullable_input" in invocation and util.is_nullable(data):
        return []
    this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
    if "variadic" in invocation:
        params = [engine.make_param(ctx, this, invocation["variadic"], p) for p in (raw_params or [])]
        return util.arraify(invocation["fn"](ctx, util.arraify(data), *params))
    if "arity" not in invocation:
        if raw_params is None or util.is_empty(raw_params):
            return util.arraify(invocation["fn"](ctx, util.arraify(data)))
        raise Exception(f"{fn_name} expects no params")
    if invocation["fn"].__name__ == "trace_fn" and raw_params is not None:
        raw_params = raw_params[:1]
    count = len(raw_params) if isinstance(raw_params, list) else 0
    if count not in invocation["arity"]:
        raise Exception(f"{fn_name} wrong arity: got {count}")
    types = invocation["arity"][count]
    params = [ctx, data] + [engine.make_param(ctx, this, types[i], raw_params[i]) for i in range(count)]
    if "nullable" in invocation and any(util.is_nullable(p) for p in params):
        return []
    return util.arraify(invocation["fn"](*params))


def _infix(ctx: dict, op: str, data: Any, raw_params: list) -> list:
    registry = ctx.get("registry")
    if registry is None:
        return _ORIGINAL_INFIX(ctx, op, data, raw_params)
    invocation = registry.get(op)
    if invocation is None or "fn" not in invocation:
        raise Exception(f"Not implemented {op}")
    if len(raw_params) != 2:
        raise Exception("Infix invoke should have arity 2")
    types = invocation["arity"][2]
    params = [ctx] + [engine.make_param(ctx, data, types[i], raw_params[i]) for i in range(2)]
    if "nullable" in invocation and any(util.is_nullable(p) for p in params):
        return []
    return util.arraify(invocation["fn"](*params))


# pyproject.toml pins fhirpathpy exactly: these patches (and fhirpath/_compile.py) replace
# and re-implement its internals, which any other release may change.
SUPPORTED_FHIRPATHPY = "2.2.4"


def require_supported_fhirpathpy() -> None:
    """Raise IncompatibleLibrary unless the installed fhirpathpy is the one patched here."""
    installed = metadata.version("fhirpathpy")
    if installed != SUPPORTED_FHIRPATHPY:
        raise IncompatibleLibrary(
            f"fhirpathpy {installed} is installed, but cds_service.fhirpath patches the internals of "
            f"fhirpathpy {SUPPORTED_FHIRPATHPY} only: install fhirpathpy=={SUPPORTED_FHIRPATHPY} "
            "(pyproject.toml, requirements.lock)")


def install() -> None:
    require_supported_fhirpathpy()
    for name, evaluate in _ORIGINAL.items():
        evaluators[name] = _remember(evaluate)
    engine.doInvoke = _invoke
    engine.infix_invoke = _infix


def uninstall() -> None:
    """Back to plain fhirpathpy (for the equivalence test)."""
    evaluators.update(_ORIGINAL)
    engine.doInvoke = _ORIGINAL_INVOKE
    engine.infix_invoke = _ORIGINAL_INFIX
