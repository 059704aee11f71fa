"""A settled service process does not run the garbage collector inside a call (issue 12).

Counted, not timed: CPython's young generation is collected every 700 net allocations, and
a busy call keeps more than that alive until it answers, so with the default threshold
workload (a) of bench/workloads.py collects about once per call at 300 resources and four
times at 10,000 (3-4% of a call). `knowledge.settle()`, which every app and reload runs,
raises the threshold; these tests count the collections that happen during calls.
"""

from __future__ import annotations

import gc

import pytest

from cds_service import knowledge, service

from .support.bench import bench_module


@pytest.fixture(scope="module")
def app_state(kb):
    """(kb, app state, bench/workloads.py) with the app created as in a fresh interpreter."""
    from cds_service.web import create_app, state_of

    previous = gc.get_threshold()
    gc.set_threshold(700, *previous[1:])  # as a fresh interpreter starts
    with bench_module("workloads") as workloads:
        app = create_app({}, kb=kb, clock=lambda: workloads.NOW)
        state = state_of(app)
        yield kb, state, workloads
    state.feedback.close()
    gc.set_threshold(*previous)


def collections_during(calls) -> list[int]:
    """Collections per generation while `calls` runs."""
    counted = [0, 0, 0]

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            counted[info["generation"]] += 1

    gc.callbacks.append(count)
    try:
        calls()
    finally:
        gc.callbacks.remove(count)
    return counted


def test_settle_raises_the_young_threshold_and_leaves_a_disabled_collector_alone(app_state):
    assert gc.get_threshold()[0] == knowledge.YOUNG_THRESHOLD > 700
    previous = gc.get_threshold()
    try:
        gc.set_threshold(0, *previous[1:])  # an operator who switched collection off
        knowledge.settle()
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*previous)


@pytest.mark.parametrize("size", [300, 10_000])
def test_busy_calls_collect_nothing_after_warm_up(app_state, size):
    kb, state, workloads = app_state
    svc, body, _facts = workloads.request("a", size, kb.services.values())

    def calls(n: int) -> list:
        return [service.call(kb, svc, body, workloads.NOW, state.fetch) for _ in range(n)]

    warm = calls(2)
    assert len(warm[-1].response["cards"]) == 9  # the busy call, not a cheap one
    gc.collect()
    assert collections_during(lambda: calls(6)) == [0, 0, 0]
