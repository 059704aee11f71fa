"""What merging the fetch path's searches costs a long chart behind small pages (issue 12).

    .venv/bin/python bench/fetch_paging.py [--resources 10000] [--page-size 200] [--calls 6] [--delay 0.05]

A search merged for several keys (data/_searches.py) follows its pages one after another,
where the keys' own searches page side by side: a chart with many matching records, behind
a server with small pages, could wait longer for it. This runs workload (a)'s fetch path
(no prefetch) against bench/fhir_stub.py serving the chart at that page size, `_include`
ignored (the Medications read: the fetch budget's row), `--delay` added to every request,
with the service's default and with `fetch_merge_max_chars` 0 (one search per key, one read
per Medication), alternated over two rounds, and prints per way the median and slowest
call, the GETs a call sent and its cards (which must agree, or it stops).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from fetch_loop import threaded_body
from fhir_stub import running
from realistic import CountingTransport
from reference import machine, reference_now
from workloads import NOW, WORKLOADS, chart, context

from cds_service import create_app
from cds_service.service import call as call_hook

WAYS = {"merged (the default)": {}, "one search per key": {"fetch_merge_max_chars": 0}}


def compare(resources: int, page_size: int, calls: int, delay: float) -> dict[str, dict]:
    apps = {name: create_app({"log_level": "WARNING", **settings}) for name, settings in WAYS.items()}
    rows: dict[str, dict] = {name: {"times": [], "gets": 0, "calls": 0} for name in WAYS}
    answers: dict[str, list[str]] = {}
    with running(chart("a", resources), delay, "keepalive", include=False, page_size=page_size) as base:
        body = threaded_body(context("a"), base)
        for _ in range(2):
            for name, app in apps.items():  # alternated: a slower moment of the machine falls on both
                state = app.extensions["mm_cds"]
                service = next(s for s in state.kb.services.values() if s.hook == WORKLOADS["a"].hook)
                counting = CountingTransport(state.fetch.transport)
                fetch = dataclasses.replace(state.fetch, transport=counting)
                for i in range(calls + 1):
                    started = time.perf_counter()
                    outcome = call_hook(state.kb, service, body, NOW, fetch)
                    if i:  # the first call warms the connections
                        rows[name]["times"].append(time.perf_counter() - started)
                answers[name] = sorted(card["summary"] for card in outcome.response["cards"])
                rows[name]["gets"] += counting.sent
                rows[name]["calls"] += calls + 1
    first, *others = answers.values()
    if any(other != first for other in others):
        raise SystemExit("the two ways answered different cards: the comparison would mean nothing")
    return {name: {"median_ms": statistics.median(r["times"]) * 1000, "max_ms": max(r["times"]) * 1000,
                   "gets": r["gets"] / r["calls"], "cards": len(first)} for name, r in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=10000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    print(f"machine: {machine(reference_now())}")
    print(f"workload (a), {args.resources} resources, no prefetch, {args.page_size} entries a page, "
          f"{args.delay * 1000:.0f} ms a request, _include ignored, {args.calls} calls a way and round, two rounds")
    for name, row in compare(args.resources, args.page_size, args.calls, args.delay).items():
        print(f"  {name:22s} median {row['median_ms']:6.1f} ms, slowest {row['max_ms']:6.1f} ms, "
              f"{row['gets']:.0f} GETs a call, {row['cards']} cards")


if __name__ == "__main__":
    main()
