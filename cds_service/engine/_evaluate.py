"""Evaluate a compiled PlanDefinition for one hook call. Pure: no Flask, no I/O.

Variables are evaluated lazily (on first use by a condition or another variable) and
kept for the request. A condition fires its action only when it evaluates to exactly
`true`; an error, an empty result or a non-boolean counts as false and is recorded.
"""

from __future__ import annotations

import json
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
    INDICATOR,
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


@dataclass(slots=True)
class CardResult:
    action: CardAction
    fired: bool = False
    title: str = ""
    description: str | None = None
    suggestions: list[SuggestionResult] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    indicator: str = "info"  # the action's, or its dynamic priority's
    prefix: str | None = None  # a member's heading in its bundle's detail
    members: list[CardResult] = field(default_factory=list)  # a bundle's members evaluated (empty when its conditions failed)
    # Repeat suppression (RECOMMENDATIONS-v2 2.4): the data fingerprint (JSON text of the
    # fingerprint expression's value; "" without one), the notBeyond moment if any, and,
    # once the service has decided, why the card (or member) was left out.
    fingerprint: str = ""
    not_beyond: str | None = None
    suppressed: dict[str, Any] | None = None
    env: Environment | None = field(default=None, repr=False, compare=False)

    @property
    def code(self) -> str:
        return self.action.code.get("code", "")

    @property
    def fired_members(self) -> list[CardResult]:
        return [m for m in self.members if m.fired and m.suppressed is None]

    @property
    def codes(self) -> list[str]:
        """The recommendation codes the card reports: a bundle's fired members, else its own."""
        return [m.code for m in self.fired_members] if self.action.is_bundle else [self.code]


@dataclass
class PlanResult:
    plan: Plan
    cards: list[CardResult]
    variables: dict[str, Outcome]
    notes: list[str]
    unmatched: set[tuple[str | None, str]]
    run: Any = field(default=None, repr=False, compare=False)  # the evaluation, for suppress()

    @property
    def fired(self) -> list[CardResult]:
        return [c for c in self.cards if c.fired and c.suppressed is None]


class _Variables:
    """Computes a %variable on first read (an Environment's `compute`), recording it for the
    trace when explaining."""

    def __init__(self, evaluator: Evaluator, explain: bool, recorded: dict[str, Outcome]):
        self.evaluator, self.explain, self.recorded = evaluator, explain, recorded

    def __call__(self, variable: Variable, env: Environment) -> list:
        if not self.explain:  # only the trace shows variables (values and errors)
            try:
                return self.evaluator.run(variable.expression, env)
            except EvaluationError:
                return []
        outcome = Outcome(variable.element, variable.expression.source)
        try:
            value = self.evaluator.run(variable.expression, env)
            outcome.value = _summary(value)
        except EvaluationError as exc:
            value, outcome.error = [], str(exc)
        self.recorded.setdefault(variable.name, outcome)
        return value


class _Run:
    """State of one evaluation: the evaluator, the environment and the trace."""

    def __init__(self, plan: Plan, data: RequestData, terminology: Terminology, explain: bool):
        self.plan, self.data, self.explain = plan, data, explain
        self.scope = Scope(terminology=terminology, today=data.today, now=data.now, eager=explain)
        self.evaluator = Evaluator(self.scope, data.patient)
        self.variables: dict[str, Outcome] = {}
        # Not a bound method of the run: the environment would then hold the run that holds
        # it, a cycle left to the garbage collector with the whole call's data in it.
        self._variable = _Variables(self.evaluator, explain, self.variables)
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
        }
        # the requirements' records come from data.retrieved, filtered when first read
        self.env = Environment(base, plan.variables_by_name, compute=self._variable, fallback=data.retrieved)

    def action_env(self, action: CardAction, parent: Environment | None = None) -> Environment:
        outer = self.env if parent is None else parent
        if not action.variables:
            return outer
        return Environment({}, action.variables_by_name, parent=outer, compute=self._variable)

    def condition(self, condition: Condition, env: Environment) -> Outcome:
        outcome = Outcome(condition.element, condition.expression.source, description=condition.description)
        try:
            value = self.evaluator.run(condition.expression, env)
        except EvaluationError as exc:
            outcome.error = str(exc)
            return outcome
        _judge(outcome, value)
        return outcome

    def holds(self, condition: Condition, env: Environment, outcomes: list[Outcome]) -> bool:
        """What condition() decides, its outcome kept only when it is not a plain boolean
        (an error, an empty or odd value is still recorded; a plain answer needs no record
        outside the trace)."""
        try:
            value = self.evaluator.run(condition.expression, env)
        except EvaluationError as exc:
            outcomes.append(Outcome(condition.element, condition.expression.source, error=str(exc),
                                    description=condition.description))
            return False
        if len(value) == 1 and (value[0] is True or value[0] is False):
            return value[0]
        outcome = Outcome(condition.element, condition.expression.source, description=condition.description)
        _judge(outcome, value)
        outcomes.append(outcome)
        return outcome.error is None and outcome.value is True

    def text(self, expr: Expression, env: Environment, element: str, outcomes: list[Outcome],
             allow_empty: bool = False) -> str | None:
        try:
            value = plain(self.evaluator.run(expr, env))
        except EvaluationError as exc:
            outcomes.append(Outcome(element, expr.source, error=str(exc)))
            return None
        if allow_empty and not value:
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
    run.scope.notes += plan.arming_notes.get(data.hook, ())  # D-11: every trace says which rules are not (fully) armed
    cards = [_card(run, action) for action in plan.actions if data.hook in action.hooks]
    if explain:
        for name in run.env.lazy:
            run.env[name]  # noqa: B018 - the trace shows every variable, used or not
    return PlanResult(plan, cards, run.variables, run.scope.notes, run.scope.unmatched, run)


def suppress(result: PlanResult, decisions: dict[str, dict[str, Any]]) -> None:
    """Leave out the cards and bundle members whose code the service decided to suppress
    (`decisions`: code -> what the trace says). A bundle keeps its remaining members, its
    summary and detail computed again from them; with none left it is not issued."""
    run: _Run = result.run
    for card in result.cards:
        if not card.fired or card.suppressed is not None:
            continue
        if not card.action.is_bundle or card.code in decisions:
            card.suppressed = decisions.get(card.code)
            continue
        before = [m.code for m in card.fired_members]
        for member in card.fired_members:
            member.suppressed = decisions.get(member.code)
        remaining = [m.code for m in card.fired_members]
        if not remaining:
            card.suppressed = {"members": before}
        elif remaining != before and card.env is not None:
            card.title, card.description = card.action.title, card.action.description
            _dynamic(run, card.action, Environment({"bundleMembers": remaining}, {}, parent=card.env), card,
                     bool(card.action.override_reasons))


def _fingerprint(run: _Run, card: CardResult, env: Environment) -> None:
    rule = card.action.suppression
    if rule is None:
        return
    for name, expr in (("fingerprint", rule.fingerprint), ("not_beyond", rule.not_beyond)):
        if expr is None:
            continue
        try:
            value = plain(run.evaluator.run(expr, env))
        except EvaluationError as exc:
            card.outcomes.append(Outcome(f"{rule.element}.{name}", expr.source, error=str(exc)))
            value = None
        if name == "fingerprint":
            card.fingerprint = json.dumps(value, sort_keys=True, default=str)
        elif value:
            card.not_beyond = str(value[0])


def _passes(run: _Run, conditions: tuple[Condition, ...], env: Environment, outcomes: list[Outcome]) -> bool:
    if not run.explain:  # the first condition not true decides; the trace wants them all
        for condition in conditions:  # a loop, not all(generator): run for every action of every call
            if not run.holds(condition, env, outcomes):
                return False
        return True
    passed = True
    for condition in conditions:
        outcome = run.condition(condition, env)
        outcomes.append(outcome)
        if outcome.error or outcome.value is not True:
            passed = False
            if not run.explain:
                break  # the rest cannot change the answer; the trace wants them all
    return passed


def _card(run: _Run, action: CardAction, parent: Environment | None = None,
          reasons_above: bool = False) -> CardResult:
    """One card action (or a bundle's member, evaluated in its bundle's environment)."""
    result = CardResult(action=action, title=action.title, description=action.description,
                        indicator=action.indicator, prefix=action.prefix)
    if action.unarmed:  # D-11: a rule whose trigger value set has no code never fires
        result.outcomes.append(Outcome(action.element, "armed-by", note="not armed: " + "; ".join(action.unarmed)))
        return result
    env = run.action_env(action, parent)
    result.env = env
    if not _passes(run, action.conditions, env, result.outcomes):
        return result
    if action.is_bundle:
        return _bundle(run, action, env, result)
    result.fired = True
    if parent is None:  # a member's: once its bundle knows which members fired
        _fingerprint(run, result, env)
    _dynamic(run, action, env, result, bool(action.override_reasons) or reasons_above)
    for suggestion in action.suggestions:
        outcomes: list[Outcome] = []
        if _passes(run, suggestion.conditions, env, outcomes):
            resource = activity.apply(suggestion.definition, run.evaluator, env, run.data, outcomes)
            result.suggestions.append(SuggestionResult(suggestion, resource))
        result.outcomes.extend(outcomes)
    return result


def _bundle(run: _Run, action: CardAction, env: Environment, result: CardResult) -> CardResult:
    """Members first, exactly as standalone cards; the bundle fires when one of them did,
    and its text is computed last so it can name them (%bundleMembers)."""
    reasons = bool(action.override_reasons)
    result.members = [_card(run, m, env, reasons) for m in action.members if run.data.hook in m.hooks]
    fired = [m.code for m in result.fired_members]
    if not fired:
        return result
    result.fired = True
    with_members = Environment({"bundleMembers": fired}, {}, parent=env)
    _dynamic(run, action, with_members, result, reasons)
    _fingerprint(run, result, with_members)
    for member in result.fired_members:  # a member's fingerprint may name the set fired (%bundleMembers)
        _fingerprint(run, member, Environment({"bundleMembers": fired}, {}, parent=member.env or env))
    return result



def _dynamic(run: _Run, action: CardAction, env: Environment, result: CardResult, has_reasons: bool) -> None:
    for path, expr in action.dynamic:
        where = f"{action.element}.dynamicValue[{path}]"
        # An empty prefix (no heading) is an answer, not an error.
        text = run.text(expr, env, where, result.outcomes, allow_empty=path == "prefix")
        if path == "prefix":
            result.prefix = text or None
            continue
        if text is None:
            continue
        if path != "priority":
            setattr(result, path, text)
            continue
        indicator = INDICATOR.get(text)
        if indicator is None:
            result.outcomes.append(Outcome(where, expr.source, error=f"priority '{text}' is not one of "
                                           f"{', '.join(INDICATOR)}: ignored"))
        elif indicator != "info" and not has_reasons:
            # A warning the clinician cannot override would be refused by the 2.0 schema.
            result.outcomes.append(Outcome(where, expr.source, error=f"priority '{text}' needs override reasons, "
                                           "which this action has not: ignored"))
        else:
            result.indicator = indicator


def _judge(outcome: Outcome, value: list) -> None:
    """A condition's value as the trace shows it: exactly `true` passes; anything else is
    false, an empty or non-boolean value with a note or an error saying why."""
    if len(value) == 1 and (value[0] is True or value[0] is False):
        outcome.value = value[0]  # the usual answer, already plain
        return
    plain_value = plain(value)
    outcome.value = plain_value[0] if len(plain_value) == 1 else plain_value
    if not plain_value:
        outcome.note = "empty (no data to decide on): counted as false"
    elif plain_value not in ([True], [False]):
        outcome.error = f"not a boolean: {_summary(value)!r}; counted as false"


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
