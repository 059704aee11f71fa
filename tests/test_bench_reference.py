"""bench/reference.py, the fixed task timed beside the benchmarks: the same work on every
run (so its time measures the machine, not the input), and named in each run's header."""

from __future__ import annotations

import math

import pytest

from tests.support.bench import bench_module


@pytest.fixture(scope="module")
def reference():
    with bench_module("reference") as module:
        yield module


def test_the_task_does_the_same_work_on_every_run(reference) -> None:
    first = reference.reference_task(reference.records())
    again = reference.reference_task(reference.records())
    assert first == again
    kept = first // 1000
    # the records with a wanted code (1 in 5 of the 97) and a value above 50 (about half)
    assert reference.RECORDS // 20 < kept < reference.RECORDS // 5


def test_the_time_is_a_median_of_cpu_time_with_the_collector_restored(reference) -> None:
    import gc

    assert gc.isenabled()
    elapsed = reference.reference_ms(repeats=3)
    assert math.isfinite(elapsed) and elapsed > 0
    assert gc.isenabled()


def test_every_run_names_the_machine_speed_in_its_header(reference) -> None:
    # machine() is each benchmark's first line (bench/run.py, bench/realistic.py)
    measured = reference.reference_now()  # the task in a process of its own
    assert math.isfinite(measured) and measured > 0
    line = reference.machine()
    assert "cores" in line and "load average" in line
    assert "reference task" in line and line.rstrip().endswith(" ms")
    assert reference.machine(12.345).endswith("reference task 12.35 ms")
