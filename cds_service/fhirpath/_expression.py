"""FHIRPath: strict parsing at load, evaluation with fhirpathpy's R4 model at request time.

fhirpathpy's own parser ignores syntax errors ("Patient..name" and "1 +" become some
other expression), so expressions are parsed here with the same ANTLR grammar and an
error listener that raises, against the grammar's `entireExpression` rule (which demands
EOF). The resulting AST is the one fhirpathpy evaluates, so it is built once per
expression and reused for every request.

Functions added to FHIRPath (all answered locally, never by a terminology server):
  memberOf(url)          Coding / CodeableConcept / code in a ValueSet
  toUnit(unit)           a Quantity converted to a UCUM unit, as a decimal (empty if not convertible)
  convertsToUnit(unit)   whether a Quantity converts to that unit (no trace note either way)
  daysSince()            whole days from a date/dateTime to the request's "today"
  display()              the display of a Coding / CodeableConcept: from the loaded
                         terminology, else the coding's own display, else the text
  unitDisplay()          a Quantity's (or unit string's) unit as a clinician reads it
  resultReading(pos, neg, ind)  an Observation read as 'positive', 'negative',
                         'indeterminate', 'conflicting' or 'unreadable' (three ValueSet urls)
  A Quantity's unit is read through the unit alias map (fhirpath/_unit_map.py) by
  toUnit(), convertsToUnit() and unitDisplay(), so "K/uL" is never kelvin per microlitre.
  now(), today(), timeOfDay()   replaced: they read the request's clock (Scope.now/today)
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, FP_Type, ResourceNode
from fhirpathpy.engine.util import arraify, get_data, process_user_invocation_table
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from cds_service.errors import ArtifactError, CdsError
from cds_service.fhirpath import _results as results
from cds_service.fhirpath import _speedups as fhirpath_speedups
from cds_service.fhirpath import _units as units
from cds_service.fhirpath._compile import compile_ast
from cds_service.fhirpath._protocols import TerminologyLike, ValueSetLike
from cds_service.fhirpath._resources import codings, parse_date
from cds_service.fhirpath._truth import PLAIN_BOOLEAN
from cds_service.fhirpath._unit_map import quantity_unit, unit_display

R4 = models["r4"]
EXTRA_FUNCTIONS = ("memberOf", "toUnit", "convertsToUnit", "daysSince", "display", "unitDisplay", "resultReading")
# Functions whose string-literal arguments name value sets (checked at load).
VALUE_SET_FUNCTIONS = ("memberOf", "resultReading")
KNOWN_FUNCTIONS = frozenset(invocation_registry) | frozenset(EXTRA_FUNCTIONS)


class FhirPathSyntaxError(ArtifactError):
    """The expression does not parse under the FHIRPath grammar."""


class _RaiseOnError(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802, N803 - antlr4 names it
        raise FhirPathSyntaxError(f"column {column + 1}: {msg}")


@dataclass(frozen=True)
class Expression:
    """A FHIRPath expression parsed (and compiled) once; evaluate it with `Evaluator.run`."""

    source: str
    ast: dict = field(repr=False, compare=False)
    compiled: Callable | None = field(default=None, repr=False, compare=False)
    variables: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    value_sets: tuple[str, ...] = ()  # literal arguments of memberOf() and resultReading()
    value_set_calls: tuple[tuple[str, str], ...] = ()  # the same, as (function, url), for messages
    units: tuple[str, ...] = ()  # literal arguments of toUnit()


def parse(source: str) -> Expression:
    """Strictly parse a FHIRPath expression; raises FhirPathSyntaxError."""
    if not isinstance(source, str) or not source.strip():
        raise FhirPathSyntaxError("the expression is empty")
    return _parse(source)


# An Expression is immutable, so one parse serves every load of the same text: a reload,
# or an app built again in the same process, compiles only the expressions that changed.
@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> Expression:
    lexer = FHIRPathLexer(InputStream(source))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaiseOnError())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_RaiseOnError())
    tree = parser.entireExpression()
    listener = ASTPathListener()
    ParseTreeWalker().walk(listener, tree.expression())
    ast = listener.parentStack[0]
    names: set[str] = set()
    functions: set[str] = set()
    calls: list[tuple[str, dict]] = []
    _scan(ast, names, functions, calls)
    value_set_calls = tuple((fn, arg) for fn, node in calls if fn in VALUE_SET_FUNCTIONS for arg in _literal_args(node))
    return Expression(
        source=source,
        ast=ast,
        compiled=compile_ast(ast, _REGISTRY),
        variables=frozenset(names),
        functions=frozenset(functions),
        value_sets=tuple(url for _, url in value_set_calls),
        value_set_calls=value_set_calls,
        units=tuple(arg for fn, node in calls if fn in ("toUnit", "convertsToUnit") for arg in _literal_args(node)),
    )


def _scan(node: dict, names: set[str], functions: set[str], calls: list[tuple[str, dict]]) -> None:
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "ExternalConstant" and children:
        names.add(children[0].get("text", "").strip("`"))
    if kind == "Functn" and children:
        name = children[0].get("text", "")
        functions.add(name)
        calls.append((name, node))
    for child in children:
        _scan(child, names, functions, calls)


def _literal_args(functn: dict) -> list[str]:
    """The arguments of a call that are string literals (a %variable is checked at run time)."""
    found = []
    for child in functn.get("children", []):
        if child.get("type") != "ParamList":
            continue
        for term in child.get("children", []):
            while term.get("children") and term.get("type") in ("TermExpression", "LiteralTerm"):
                term = term["children"][0]
            if term.get("type") == "StringLiteral":
                found.append(term["text"][1:-1].replace("\\'", "'"))
    return found


# -- request-time evaluation -----------------------------------------------------------


class EvaluationError(CdsError):
    """An expression failed on this data (bad type, singleton expected, ...)."""


@dataclass
class Scope:
    """What the added functions need for one request; also collects trace notes."""

    terminology: TerminologyLike
    today: dt.date
    now: dt.datetime | None = None  # the request's one clock; None: midnight UTC of `today`
    notes: list[str] = field(default_factory=list)
    unmatched: set[tuple[str | None, str]] = field(default_factory=set)
    eager: bool = False  # and/or/implies evaluate both operands (the explain trace lists every variable read)


_scope: contextvars.ContextVar[Scope] = contextvars.ContextVar("fhirpath_scope")


def _value_set(function: str, url: str) -> ValueSetLike:
    vs = _scope.get().terminology.get(url)
    if vs is None:
        raise EvaluationError(f"{function}: unknown ValueSet '{url}'")
    return vs


def _member_of(inputs: list, url: str) -> Any:
    scope = _scope.get()
    vs = _value_set("memberOf", url)
    if not inputs:
        return []
    saw_code = False
    for item in inputs:
        for system, code in codings(item):
            saw_code = True
            if vs.contains(system, code):
                return True
            scope.unmatched.add((system, code))
    return False if saw_code else []


def _to_unit(inputs: list, unit: str) -> Any:
    if not inputs:
        return []
    if len(inputs) > 1:
        raise EvaluationError("toUnit() expects a single Quantity")
    try:
        value, source_unit, recorded = quantity_unit(get_data(inputs[0]), _scope.get().terminology.unit_map)
    except TypeError:
        raise EvaluationError("toUnit() expects a Quantity") from None
    if not source_unit:
        _scope.get().notes.append(f"quantity {value} has no unit; not converted to '{unit}'")
        return []
    try:
        return units.convert(value, source_unit, unit)
    except units.UnitError as exc:
        # name the unit as recorded too: the alias map may have read it as another
        read_as = f" ('{recorded}' read as '{source_unit}')" if recorded and recorded.strip() != source_unit else ""
        _scope.get().notes.append(f"unit not convertible{read_as}: {exc}")
        return []


def _converts_to_unit(inputs: list, unit: str) -> Any:
    if len(inputs) != 1:
        return []
    try:
        _, source_unit, _ = quantity_unit(get_data(inputs[0]), _scope.get().terminology.unit_map)
    except TypeError:
        return False
    if not source_unit:
        return False
    try:
        units.conversion_factor(source_unit, unit)
        return True
    except units.UnitError:
        return False


def _unit_display(inputs: list) -> Any:
    unit_map = _scope.get().terminology.unit_map
    return [found for item in inputs if (found := unit_display(get_data(item), unit_map))]


def _result_reading(inputs: list, positive: str, negative: str, indeterminate: str) -> Any:
    scope = _scope.get()
    value_sets = (_value_set("resultReading", positive), _value_set("resultReading", negative),
                  _value_set("resultReading", indeterminate))
    sets = results.ResultSets(value_sets, scope.terminology.result_text_system)
    readings = []
    for item in inputs:
        unknown: list = []
        observation = get_data(item)
        reading = results.read(observation, sets, unknown)
        scope.unmatched.update(unknown)
        if reading in ("unreadable", "conflicting"):
            scope.notes.append(f"result {_reference(observation)} is {reading}")
        readings.append(reading)
    return readings


def _reference(resource: Any) -> str:
    if isinstance(resource, dict) and resource.get("id"):
        return f"{resource.get('resourceType', 'Observation')}/{resource['id']}"
    return "(an Observation without id)"


def _display(inputs: list) -> Any:
    terminology = _scope.get().terminology
    out = []
    for item in inputs:
        if not isinstance(item, dict):
            continue
        found = None
        for system, code in codings(item):
            found = terminology.display(system, code)
            if found:
                break
        if not found:
            own = [c.get("display") for c in item.get("coding") or [] if isinstance(c, dict) and c.get("display")]
            found = own[0] if own else item.get("display") or item.get("text")
        if found:
            out.append(found)
    return out


def _days_since(inputs: list) -> Any:
    if not inputs:
        return []
    item = inputs[0]
    if isinstance(item, FP_Type):
        item = str(item)
    when = parse_date(item)
    if when is None:
        raise EvaluationError("daysSince() expects a date or dateTime")
    return (_scope.get().today - when).days


def _clock() -> dt.datetime:
    scope = _scope.get()
    if scope.now is not None:
        return scope.now.astimezone(dt.timezone.utc)
    return dt.datetime.combine(scope.today, dt.time(0), dt.timezone.utc)


# now(), today() and timeOfDay() read the request's clock, never fhirpathpy's wall clock:
# a scenario's date, `as-of` and a test clock then mean the same thing everywhere.
def _now(ctx: dict, inputs: list) -> str:
    return str(FP_DateTime(_clock().isoformat().replace("+00:00", "Z")))


def _today(ctx: dict, inputs: list) -> str:
    return str(FP_DateTime(_scope.get().today.isoformat()))


def _time_of_day(ctx: dict, inputs: list) -> str:
    return str(FP_Time(_clock().time().isoformat()))


def _single(ctx: dict, inputs: list) -> list:
    # fhirpathpy returns an error *value* here, which would compare and print silently.
    if len(inputs) > 1:
        raise EvaluationError(f"single() on {len(inputs)} items")
    return inputs


_FUNCTIONS = {
    **process_user_invocation_table(
        {
            "memberOf": {"fn": _member_of, "arity": {1: ["String"]}},
            "toUnit": {"fn": _to_unit, "arity": {1: ["String"]}},
            "convertsToUnit": {"fn": _converts_to_unit, "arity": {1: ["String"]}},
            "daysSince": {"fn": _days_since},
            "display": {"fn": _display},
            "unitDisplay": {"fn": _unit_display},
            "resultReading": {"fn": _result_reading, "arity": {3: ["String", "String", "String"]}},
        }
    ),
    "single": {"fn": _single},
    "now": {"fn": _now},
    "today": {"fn": _today},
    "timeOfDay": {"fn": _time_of_day},
}
# They answer True, False or [] from plain values: fused where a boolean is consumed (_truth.py).
_FUNCTIONS["memberOf"][PLAIN_BOOLEAN] = _member_of
_FUNCTIONS["convertsToUnit"][PLAIN_BOOLEAN] = _converts_to_unit


fhirpath_speedups.install()
_REGISTRY = fhirpath_speedups.registry_for(_FUNCTIONS)
COMPILED = True  # False: fhirpathpy interprets the AST (the equivalence test compares both)


def set_compiled(on: bool) -> bool:
    """Evaluate through the compiled closures (True) or fhirpathpy's interpreter; returns
    the previous setting (the equivalence test and the profiler compare both)."""
    global COMPILED
    previous, COMPILED = COMPILED, on
    return previous


class Environment(dict):
    """FHIRPath %variables; named expressions are evaluated on first use, then kept.

    `lazy` maps a name to what computes it: a function of the environment, or, when
    `compute` is given, a definition that `compute(definition, env)` evaluates (so a static
    mapping built once serves every call). A name in neither is read from `fallback` (a
    mapping that computes on first read itself) and kept; a child environment (an action's
    own variables) falls back to its parent for other names.
    """

    def __init__(
        self,
        values: Mapping[str, Any],
        lazy: Mapping[str, Any],
        parent: Environment | None = None,
        compute: Callable[[Any, Environment], Any] | None = None,
        fallback: Mapping[str, Any] | None = None,
    ):
        super().__init__(values)
        self.lazy = lazy if compute is not None else dict(lazy)
        self.parent = parent
        self.compute = compute
        self.fallback = fallback

    def __contains__(self, name: object) -> bool:
        return (
            dict.__contains__(self, name)
            or name in self.lazy
            or (self.fallback is not None and name in self.fallback)
            or (self.parent is not None and name in self.parent)
        )

    def __missing__(self, name: str) -> Any:
        # dict's own lookup answers a name already computed; only the others come here
        if name in self.lazy:
            value = self.compute(self.lazy[name], self) if self.compute is not None else self.lazy[name](self)
            self[name] = value
            return value
        if self.fallback is not None and name in self.fallback:
            value = self[name] = self.fallback[name]
            return value
        if self.parent is not None:
            # kept here too: a value never changes once computed, and an action's
            # conditions read the same plan variables again and again
            value = self[name] = self.parent[name]
            return value
        raise KeyError(name)


class Evaluator:
    """Evaluates compiled expressions against one request's data."""

    def __init__(self, scope: Scope, root: Any):
        self.scope = scope
        self.root = arraify(root) if root is not None else [{}]
        self._context = {"dataRoot": self.root, "model": R4, "userInvocationTable": _FUNCTIONS,
                         "registry": _REGISTRY, "eager": scope.eager}

    def run(self, expr: Expression, env: Mapping[str, Any]) -> list:
        """Raw result (fhirpathpy nodes kept, so later expressions keep the R4 types)."""
        # A variable computed on first use runs inside another run, in the same scope:
        # the context variable is set once per outermost run.
        token = _scope.set(self.scope) if _scope.get(None) is not self.scope else None
        try:
            # fhirpathpy's `constants` (its clock) need no reset: now(), today() and
            # timeOfDay() are ours and read the request's clock.
            ctx = self._context.copy()  # a fresh one per run: evaluation writes $this, $index
            ctx["vars"] = env
            if COMPILED and expr.compiled is not None:
                result = expr.compiled(ctx, self.root)
                return result if isinstance(result, list) else arraify(result)
            return arraify(do_eval(ctx, self.root, expr.ast["children"][0]))
        except EvaluationError:
            raise
        except Exception as exc:  # fhirpathpy raises bare Exception, ValueError, TypeError...
            raise EvaluationError(f"{type(exc).__name__}: {exc}") from None
        finally:
            if token is not None:
                _scope.reset(token)


_PLAIN = (str, bool, int, float, type(None))


def plain(value: Any) -> Any:
    """A JSON-friendly copy of a FHIRPath result, for text, resources and the trace."""
    if type(value) in _PLAIN:
        return value  # the common leaves (card text, booleans) at once
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, ResourceNode):
        return plain(get_data(value))
    if isinstance(value, FP_Quantity):
        return {"value": plain(value.value), "unit": value.unit.strip("'")}
    if isinstance(value, FP_Type):
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def fhir_date(day: dt.date) -> FP_DateTime:
    return FP_DateTime(day.isoformat())


def fhir_datetime(moment: dt.datetime) -> FP_DateTime:
    return FP_DateTime(moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"))
