"""bench/tail.py's classification of slow requests by the writer commits that overlapped
them (the finding in docs/operations.md rests on it)."""

from __future__ import annotations

from .support.bench import bench_module


def _ms(start: float, end: float, what: str = "request") -> tuple[str, float, float, float]:
    return (what, start / 1000, end / 1000, 0.0)


def test_slow_requests_are_counted_by_the_commit_that_overlapped_them():
    with bench_module("tail") as tail:
        workers = {
            "a": [_ms(0, 5), _ms(10, 20), _ms(12, 14, "commit"), _ms(40, 45), _ms(60, 65)],
            "b": [_ms(30, 41), _ms(50, 55), _ms(70, 75), _ms(71, 72, "commit")],
        }
        # median of the requests' 5, 10, 11, 5, 5, 5, 5 ms is 5: slow means over 7 ms
        found = tail.overlaps(workers, slow_ms=2.0)
        assert found == {"own worker's commit": (2, 1), "none": (5, 1)}
        workers["a"].append(_ms(35, 36, "commit"))  # now inside b's slow request, from another worker
        found = tail.overlaps(workers, slow_ms=2.0)
        assert found == {"own worker's commit": (2, 1), "another worker's commit": (1, 1), "none": (4, 0)}
        assert tail.overlaps({"a": [_ms(0, 1, "commit")]}, 2.0) == {}
