"""bench/floor.py's replay: the call with every expression answered from a recording of the
same call gives the same cards (so the floor it times is the real call's, FHIRPath aside),
and a recording of another call is refused rather than timed."""

from __future__ import annotations

import pytest

from cds_service.data._assemble import Retrievals
from cds_service.service import call as call_hook

from .support.bench import bench_module


def _call(app, workloads, kind: str):
    state = app.extensions["mm_cds"]
    service, body, _ = workloads.request(kind, 300, state.kb.services.values())
    return lambda: call_hook(state.kb, service, body, workloads.NOW, state.fetch)


def test_the_replayed_call_answers_the_real_cards_and_retrieves_what_the_real_call_read(app, monkeypatch):
    with bench_module("floor") as floor, bench_module("workloads") as workloads:
        call = _call(app, workloads, "a")
        real = call()
        with floor.recording() as found:
            call()
        assert found.values and found.keys  # the recording saw the expressions and the key reads
        read, getitem = [], Retrievals.__getitem__
        monkeypatch.setattr(Retrievals, "__getitem__", lambda self, key: read.append(key) or getitem(self, key))
        replayed = floor.replay_checked(call, found, real)
        monkeypatch.undo()
        assert set(read) == set(found.keys)
        assert [c["summary"] for c in replayed.response["cards"]] == [c["summary"] for c in real.response["cards"]]
        row = floor.floor(app, "b", 300, calls=2)
        assert row["cards"] == len(_call(app, workloads, "b")().response["cards"]) and row["floor_ms"] > 0


def test_a_recording_of_another_call_is_refused_not_timed(app):
    with bench_module("floor") as floor, bench_module("workloads") as workloads:
        chart_open, first_order = _call(app, workloads, "b"), _call(app, workloads, "a")
        with floor.recording() as found:
            chart_open()
        with pytest.raises(SystemExit, match="not the same call|other cards"):
            floor.replay_checked(first_order, found, first_order())


def test_every_run_re_evaluates_to_its_value_on_its_environment_and_another_value_is_refused(app):
    # bench/floor.py --evaluator times the evaluator's own work by running each expression of a
    # call again on the environment it ran in: that is only the same work if it answers the same
    with bench_module("floor") as floor, bench_module("workloads") as workloads:
        call = _call(app, workloads, "b")
        with floor.recording() as outermost:
            call()
        with floor.every_run() as runs:
            call()
        assert len(runs) > len(outermost.values)  # the variables' runs inside other runs are there too
        work = floor.evaluator_work(call, runs, repeats=2, passes=2)
        assert work["runs"] == len(runs)
        position = next(i for i, run in enumerate(runs) if run[3])
        evaluator, expr, env, value = runs[position]
        runs[position] = (evaluator, expr, env, [*value, "not what it answered"])
        with pytest.raises(SystemExit, match="another value"):
            floor.evaluator_work(call, runs, repeats=1, passes=1)
