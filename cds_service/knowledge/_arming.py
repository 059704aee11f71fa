"""Armed rules (RECOMMENDATIONS-v2 D-11): which rules can fire with the loaded terminology.

Two action extensions say what a rule needs:

    {base}/StructureDefinition/armed-by        valueCanonical: a ValueSet its trigger needs;
                                               one that expands (shipped plus site) to no
                                               code leaves the rule NOT armed: it never fires
    {base}/StructureDefinition/not-armed-for   valueExpression (FHIRPath over the plan's
                                               constant variables, e.g. empty restart
                                               tables): the names the rule is not armed for;
                                               it still fires for the others

Both are settled at load, so start-up, /ready, `mm-cds terminology check` and every trace
report the same list.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cds_service import fhirpath
from cds_service.knowledge._model import CardAction, Plan, Variable
from cds_service.knowledge._terminology import Terminology

ARMED_BY = "armed-by"
NOT_ARMED_FOR = "not-armed-for"


@dataclass(frozen=True)
class Unarmed:
    """One rule that is not (fully) armed, for the reports."""

    plan: str
    code: str
    reason: str
    partial: bool  # True: not armed for some names only; it still fires for the others

    def line(self) -> str:
        return f"{self.code} ({self.plan}): {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "code": self.code, "reason": self.reason, "partial": self.partial}


def empty_value_sets(urls: Iterable[str], terminology: Terminology) -> tuple[str, ...]:
    """The reasons a rule needing these value sets is not armed (none: armed)."""
    reasons = []
    for url in urls:
        vs = terminology.get(url)
        if vs is not None and len(vs) == 0:
            reasons.append(f"ValueSet {url.rsplit('/', 1)[-1]} has no code (add the site's codes to {url}-site)")
    return tuple(reasons)


def constant_names(expression: fhirpath.Expression, variables: tuple[Variable, ...], terminology: Terminology,
                   problem: Callable[[str], None]) -> tuple[str, ...]:
    """Evaluate a not-armed-for expression with the plan's variables and no patient data."""
    scope = fhirpath.Scope(terminology=terminology, today=dt.date.today())
    evaluator = fhirpath.Evaluator(scope, None)
    lazy = {v.name: (lambda env, v=v: evaluator.run(v.expression, env)) for v in variables}
    try:
        value = fhirpath.plain(evaluator.run(expression, fhirpath.Environment({}, lazy)))
    except fhirpath.EvaluationError as exc:
        problem(f"must use only constant variables (it is settled at load): {exc}")
        return ()
    if not all(isinstance(item, str) for item in value):
        problem(f"must give names (strings), gave {value!r}")
        return ()
    return tuple(value)


def unarmed(plans: Iterable[Plan]) -> list[Unarmed]:
    """Every rule of these plans that is not armed, or not armed for some names."""
    out = []
    for plan in plans:
        for action in plan.actions:
            for entry in (action, *action.members):
                out += _entry(plan.id, entry)
    return out


def _entry(plan: str, action: CardAction) -> list[Unarmed]:
    code = action.code.get("code", "")
    rows = [Unarmed(plan, code, f"not armed: {reason}", False) for reason in action.unarmed]
    if action.not_armed_for:
        rows.append(Unarmed(plan, code, f"not armed for {', '.join(action.not_armed_for)}", True))
    return rows


def unarmed_text(rows: list[Unarmed]) -> str:
    """The list `mm-cds terminology check` and the start-up log show."""
    if not rows:
        return "Every rule is armed (each value set its trigger needs has a code)."
    return "Rules not armed (D-11: they never fire, or not for the names given):\n" + "\n".join(
        f"  - {r.line()}" for r in rows)
