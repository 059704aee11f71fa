"""Evaluate a compiled PlanDefinition for one hook call. Pure: no Flask, no I/O.

Variables are evaluated lazily (on first use by a condition or another variable) and
kept for the request. A condition fires its action only when it evaluates to exactly
`true`; an error, an empty result or a non-boolean counts as false and is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cds_service.engine import _activity as activity
from cds_service.engine._context import Outcome, RequestData
from cds_service.fhirpath import (
    Environment,
    EvaluationError,
    Evaluator,
    Expression,
    Scope,
    fhir_date,
    fhir_datetime,
    plain,
)
from cds_service.knowledge import (
    CardAction,
    Condition,
    Plan,
    SuggestionAction,
    Terminology,
    Variable,
)


@dataclass
class SuggestionResult:
    action: SuggestionAction
    resource: dict


@dataclass
class CardResult:
    action: CardAction
    fired: bool = False
    title: str = ""
    description: str | None = None
    suggestions: list[SuggestionResult] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class PlanResult:
    plan: Plan
    cards: list[CardResult]
    variables: dict[str, Outcome]
    notes: list[str]
    unmatched: set[tuple[str | None, str]]

    @property
    def fired(self) -> list[CardResult]:
        return [c for c in self.cards if c.fired]


class _Run:
    """State of one evaluation: the evaluator, the environment and the trace."""

    def __init__(self, plan: Plan, data: RequestData, terminology: Terminology, explain: bool):
        self.plan, self.data, self.explain = plan, data, explain
        self.scope = Scope(terminology=terminology, today=data.today, now=data.now)
        self.evaluator = Evaluator(self.scope, data.patient)
        self.variables: dict[str, Outcome] = {}
        base = {
            "hook": data.hook,
            "hookContext": data.context,
            "patient": [data.patient] if data.patient else [],
            "draftOrders": data.draft_orders,
            "selections": data.selections,
            "now": fhir_datetime(data.now),
            "today": fhir_date(data.today),
            "ucum": "http://unitsofmeasure.org",
            "resource": [data.patient] if data.patient else [],
            **data.retrieved,
        }
        self.env = Environment(base, self._lazy(plan.variables))

    def _lazy(self, variables: tuple[Variable, ...]) -> dict:
        return {v.name: (lambda env, v=v: self._variable(v, env)) for v in variables}

    def _variable(self, variable: Variable, env: Environment) -> list:
        outcome = Outcome(variable.element, variable.expression.source)
        try:
            value = self.evaluator.run(variable.expression, env)
            outcome.value = _summary(value)
        except EvaluationError as exc:
            value, outcome.error = [], str(exc)
        self.variables.setdefault(variable.name, outcome)
        return value

    def action_env(self, action: CardAction) -> Environment:
        if not action.variables:
            return self.env
        return Environment({}, self._lazy(action.variables), parent=self.env)

    def condition(self, condition: Condition, env: Environment) -> Outcome:
        outcome = Outcome(condition.element, condition.expression.source, description=condition.description)
        try:
            value = self.evaluator.run(condition.expression, env)
        except EvaluationError as exc:
            outcome.error = str(exc)
            return outcome
        plain_value = plain(value)
        outcome.value = plain_value[0] if len(plain_value) == 1 else plain_value
        if not plain_value:
            outcome.note = "empty (no data to decide on): counted as false"
        elif plain_value not in ([True], [False]):
            outcome.error = f"not a boolean: {_summary(value)!r}; counted as false"
        return outcome

    def text(self, expr: Expression, env: Environment, element: str, outcomes: list[Outcome]) -> str | None:
        try:
            value = plain(self.evaluator.run(expr, env))
        except EvaluationError as exc:
            outcomes.append(Outcome(element, expr.source, error=str(exc)))
            return None
        if len(value) != 1 or not isinstance(value[0], str | int | float):
            outcomes.append(Outcome(element, expr.source, error=f"expected one string, got {value!r}"))
            return None
        return str(value[0])


def evaluate(
    plan: Plan, data: RequestData, terminology: Terminology, explain: bool = False
) -> PlanResult:
    """Evaluate every action of the plan that the hook triggers."""
    run = _Run(plan, data, terminology, explain)
    cards = [_card(run, action) for action in plan.actions if data.hook in action.hooks]
    if explain:
        for name in run.env.lazy:
            run.env[name]  # noqa: B018 - the trace shows every variable, used or not
    return PlanResult(plan, cards, run.variables, run.scope.notes, run.scope.unmatched)


def _passes(run: _Run, conditions: tuple[Condition, ...], env: Environment, outcomes: list[Outcome]) -> bool:
    passed = True
    for condition in conditions:
        outcome = run.condition(condition, env)
        outcomes.append(outcome)
        if outcome.error or outcome.value is not True:
            passed = False
            if not run.explain:
                break  # the rest cannot change the answer; the trace wants them all
    return passed


def _card(run: _Run, action: CardAction) -> CardResult:
    result = CardResult(action=action, title=action.title, description=action.description)
    env = run.action_env(action)
    if not _passes(run, action.conditions, env, result.outcomes):
        return result
    result.fired = True
    for path, expr in action.dynamic:
        text = run.text(expr, env, f"{action.element}.dynamicValue[{path}]", result.outcomes)
        if text is not None:
            setattr(result, path, text)
    for suggestion in action.suggestions:
        outcomes: list[Outcome] = []
        if _passes(run, suggestion.conditions, env, outcomes):
            resource = activity.apply(suggestion.definition, run.evaluator, env, run.data, outcomes)
            result.suggestions.append(SuggestionResult(suggestion, resource))
        result.outcomes.extend(outcomes)
    return result


def _summary(value: Any) -> Any:
    """A readable trace value: resources become references, a single primitive a scalar."""
    items = plain(value)
    out = [
        f"{item['resourceType']}/{item.get('id', '?')}" if isinstance(item, dict) and "resourceType" in item else item
        for item in items
    ]
    if len(out) == 1 and not (isinstance(items[0], dict) and "resourceType" in items[0]):
        return out[0]
    return out
