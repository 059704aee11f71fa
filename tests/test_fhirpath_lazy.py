"""Short-circuit `and`/`or`/`implies` and lazy `iif` cut the FHIRPath work of a call (issue 12).

Counted, not timed: workload (a) of bench/workloads.py (a first teclistamab order, 9 cards)
after warm-up runs at most RUNS_BOUND expressions per call (Evaluator.run, nested runs of
lazy %variables included). With the rules of catalogue v2 it is 250 per call, and 311 when
every operand is evaluated (eager); the bound leaves a little room for rule edits, and a
return to eager operands (every right operand and its variables evaluated) exceeds it.
The explain trace still evaluates every operand, so it lists the variables the
interpreter would read (tests/test_fhirpath_speedups.py compares both).
"""

from __future__ import annotations

from cds_service import service
from cds_service.fhirpath import _expression

from .support.counting import count_calls
from .test_card_check import busy, run, workloads  # noqa: F401 - the shared fixture

RUNS_BOUND = 275  # with the catalogue v2 rules: 250 lazy, 311 with eager operands (2026-12-02)


def count_runs(monkeypatch) -> dict[str, int]:
    """Count Evaluator.run calls from now on (nested runs of lazy %variables included)."""
    return count_calls(monkeypatch, _expression.Evaluator, "run")


def test_workload_a_runs_fewer_expressions_after_short_circuit(busy, monkeypatch):  # noqa: F811
    run(busy, 2)
    counted = count_runs(monkeypatch)
    outcomes = run(busy, 3)
    per_call = counted["runs"] / 3
    print("runs per call", per_call)
    assert all(len(o.response["cards"]) == 9 for o in outcomes)
    assert per_call <= RUNS_BOUND


def test_explain_still_evaluates_both_operands(busy, monkeypatch):  # noqa: F811
    kb, svc, body, fetch = busy
    counted = count_runs(monkeypatch)
    service.call(kb, svc, body, workloads.NOW, fetch)
    fast = counted["runs"]
    counted["runs"] = 0
    service.call(kb, svc, body, workloads.NOW, fetch, explain=True)
    assert counted["runs"] > fast
