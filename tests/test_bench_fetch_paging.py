"""bench/fetch_paging.py: the long-chart comparison of merged searches with one search per
key, against the bench's stub at a small page size, answers the same cards both ways (or
stops) and counts the GETs each way sent."""

from __future__ import annotations

from .support.bench import bench_module


def test_merged_and_per_key_fetching_of_a_paged_chart_agree_and_are_counted(no_proxy_env):
    with bench_module("fetch_paging") as fetch_paging:
        rows = fetch_paging.compare(resources=300, page_size=20, calls=1, delay=0.0)
    merged, alone = rows["merged (the default)"], rows["one search per key"]
    assert merged["cards"] == alone["cards"] == 9
    # next pages and Medication reads included: the merged searches send fewer GETs, not none
    assert 13 <= merged["gets"] < alone["gets"] and alone["gets"] >= 42
    assert merged["median_ms"] > 0 and alone["max_ms"] >= alone["median_ms"]
