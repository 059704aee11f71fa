"""Measure the representative workloads of bench/workloads.py (issue 12): `make bench-workloads`.

(1) in process: one hook call (validate, assemble from prefetch, resolve medications,
    retrieve, evaluate every rule, render, check the cards), CPU time of this process,
    median and p95, the same call with FHIRPath replayed (bench/floor.py: the floor a
    faster evaluator could reach), cards and suggestions per call beside the timings, for
    workloads (a)-(c) at about 300 and 10,000 chart resources;
(2) over HTTP against the production server (`mm-cds serve --prod`: gunicorn, its default
    workers and threads), workload (a): p95 with 1 client, requests/s with 8 clients, p99
    with 32 clients (wrk when installed, else Python threads, and the table says which);
(3) worker memory (RSS) after the HTTP runs;
(4) the fetch path: workload (a) at 300 resources with no prefetch, against a loopback FHIR
    server in its own process adding 50 ms to every query: answering the medication
    searches' `_include`, then ignoring it (Medication reads included).

    .venv/bin/python bench/realistic.py [--calls 200] [--seconds 10] [--skip-http] [--skip-fetch]
    .venv/bin/python bench/realistic.py --profile a [--resources 300]   cProfile, top 5 by
                                                   cumulative and by total time

The load average is printed beside the numbers, and the machine's speed at the start and at
the end (bench/reference.py): this machine is shared; repeat when either is off.
Results also go to bench/results/workloads.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

# bench/profile.py (pyinstrument) would shadow the standard library's `profile`, which
# cProfile imports: import it with this script's folder off the path.
_path = sys.path[:]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import cProfile  # noqa: E402

sys.path[:] = _path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fetch_loop import threaded_body  # noqa: E402
from fhir_stub import running  # noqa: E402
from floor import replayed_ms  # noqa: E402
from memory import pss_line  # noqa: E402
from paced import paced_clients  # noqa: E402
from reference import machine, reference_now  # noqa: E402
from run import (  # noqa: E402
    ProductionServer,
    concurrent_python,
    concurrent_wrk,
    percentile,
    sequential,
    table,
)
from workloads import NOW, SIZES, WORKLOADS, chart, context, request  # noqa: E402

from cds_service import _native, create_app  # noqa: E402
from cds_service.service import call as call_hook  # noqa: E402

# 32 clients at a pace (bench/paced.py): about 35% and 65% of the production server's capacity here
PACED_THINK_MS = (200, 100)


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def per_call(outcome) -> tuple[int, int]:
    cards = outcome.response["cards"]
    return len(cards), sum(len(c.get("suggestions", [])) for c in cards)


def in_process(app, calls: int, kinds: str = "abc") -> list[dict]:
    state = app.extensions["mm_cds"]
    rows = []
    for kind in kinds:
        for n in SIZES:
            service, body, facts = request(kind, n, state.kb.services.values())
            for _ in range(5):
                call_hook(state.kb, service, body, NOW, state.fetch)
            times = []
            before = load()
            for _ in range(calls if n < 10000 else max(20, calls // 4)):
                started = time.process_time()
                outcome = call_hook(state.kb, service, body, NOW, state.fetch)
                times.append(time.process_time() - started)
            cards, suggestions = per_call(outcome)
            without, _ = replayed_ms(functools.partial(call_hook, state.kb, service, body, NOW, state.fetch), outcome, len(times))
            rows.append({"workload": kind, "name": WORKLOADS[kind].name, "resources": n, **facts, "calls": len(times),
                         "median_ms": statistics.median(times) * 1000, "p95_ms": percentile(times, 95) * 1000,
                         "floor_ms": without, "cards": cards, "suggestions": suggestions, "load": f"{before}-{load()}"})
    return rows


def over_http(app, calls: int, seconds: int) -> tuple[list[dict], dict]:
    state = app.extensions["mm_cds"]
    server = ProductionServer()
    rows = []
    run = concurrent_wrk if shutil.which("wrk") else concurrent_python
    try:
        for n in SIZES:
            service, body, _facts = request("a", n, state.kb.services.values())
            url = f"{server.base}/cds-services/{service.id}"
            before = load()
            rows.append({"resources": n, **sequential(url, body, calls if n < 10000 else calls // 3), "load": f"{before}-{load()}"})
            if run is concurrent_wrk and n < 10000:  # the same loop from wrk: without the Python client's own ~1 ms
                before = load()
                rows.append({"resources": n, **run(url, body, 1, seconds), "load": f"{before}-{load()}"})
            for clients in (8, 32):
                before = load()
                rows.append({"resources": n, **run(url, body, clients, seconds), "load": f"{before}-{load()}"})
            for think_ms in PACED_THINK_MS if n < 10000 else ():
                before = load()
                rows.append({"resources": n, **paced_clients(url, body, 32, seconds, think_ms), "load": f"{before}-{load()}"})
        memory = {"startup_s": server.startup_s, "worker_rss_mb": server.worker_rss_mb(), "pss_mb": server.pss_mb()}
    finally:
        server.stop()
    return rows, memory


class CountingTransport:
    """The service's transport, counting the GETs a call sends (searches, next pages, reads)."""

    def __init__(self, inner) -> None:
        self.inner, self._lock = inner, threading.Lock()
        self.sent = 0

    def get(self, *args, **kwargs):
        with self._lock:  # the call's GETs are sent from many threads
            self.sent += 1
        return self.inner.get(*args, **kwargs)


def fetch_path(app, calls: int = 15, stub_mode: str = "keepalive") -> dict:
    """Workload (a), 300 resources, nothing prefetched: every key from a FHIR server in its
    own process, with 0 and 50 ms added to every request, the Medications as `_include`
    entries; then with 50 ms against a server that ignores `_include`, every Medication/<id>
    read (the budget's row, "medication reads included"). `stub_mode`: how
    bench/fhir_stub.py serves, keepalive or close; see there."""
    state = app.extensions["mm_cds"]
    service = next(s for s in state.kb.services.values() if s.hook == WORKLOADS["a"].hook)
    result = {}
    records = chart("a", 300)
    counting = CountingTransport(state.fetch.transport)
    fetch = dataclasses.replace(state.fetch, transport=counting)
    # the budget's row ("medication reads included"): a server that ignores _include
    for delay, include in ((0.0, True), (0.05, True), (0.05, False)):
        with running(records, delay, stub_mode, include) as base:
            body = threaded_body(context("a"), base)
            times, cpu, before = [], 0.0, load()
            for i in range(calls + 2):
                started, cpu_started, sent = time.perf_counter(), time.process_time(), counting.sent
                outcome = call_hook(state.kb, service, body, NOW, fetch)
                gets = counting.sent - sent
                if i >= 2:
                    times.append(time.perf_counter() - started)
                    cpu += time.process_time() - cpu_started  # every thread of the service's process
            keys = sum(1 for f in outcome.fetches if f.key != "Medication")
            reads = sum(1 for f in outcome.fetches if f.key == "Medication")
            cards, _ = per_call(outcome)
            result[delay, include] = {"median_ms": statistics.median(times) * 1000, "p95_ms": percentile(times, 95) * 1000,
                             "cpu_ms": cpu / len(times) * 1000,
                             "queries": keys, "gets": gets, "medication_reads": reads, "cards": cards, "load": f"{before}-{load()}",
                             "stub": stub_mode, "include": include}
    return {"no_delay": result[0.0, True], "delay_50ms": result[0.05, True], "delay_50ms_reads": result[0.05, False]}


def profile(app, kind: str, n: int, calls: int) -> str:
    state = app.extensions["mm_cds"]
    service, body, _ = request(kind, n, state.kb.services.values())
    for _ in range(10):
        call_hook(state.kb, service, body, NOW, state.fetch)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call_hook(state.kb, service, body, NOW, state.fetch)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"workload ({kind}) at {n} resources, {calls} calls, load {load()}\n")
    stats.sort_stats("cumulative").print_stats(12)
    stats.sort_stats("tottime").print_stats(8)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each concurrent run")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-fetch", action="store_true")
    parser.add_argument("--profile", choices=sorted(WORKLOADS), help="cProfile this workload instead of measuring")
    parser.add_argument("--resources", type=int, default=300, help="with --profile")
    parser.add_argument("--stub", choices=("keepalive", "close"), default="keepalive",
                        help="fetch path: how the FHIR stub serves (bench/fhir_stub.py; close: as before issue 12's http work)")
    args = parser.parse_args()
    app = create_app({"log_level": "WARNING"}, clock=lambda: NOW)
    if args.profile:
        print(profile(app, args.profile, args.resources, args.calls))
        return
    start = reference_now()
    compiled = _native.check()  # the production image's build is compiled (make native)
    results: dict = {"machine": machine(start), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "reference_ms": {"start": start}, "compiled_modules": list(compiled)}
    build = f"{len(compiled)} modules compiled (mypyc), as in the image" if compiled else \
        f"Python only (the image compiles {len(_native.MODULES)} modules: make native)"
    print(f"machine: {results['machine']}\nrequest path: {build}\n")

    results["in_process"] = rows = in_process(app, args.calls)
    print("(1) in process, one hook call (CPU ms of this process)")
    print(table(["workload", "chart", "in prefetch", "calls", "median ms", "p95 ms", "without FHIRPath ms", "cards",
                 "suggestions", "load"],
                [[f"({r['workload']}) {r['name']}", r["resources"], r["prefetch_resources"], r["calls"], r["median_ms"],
                  r["p95_ms"], r["floor_ms"], r["cards"], r["suggestions"], r["load"]] for r in rows]))
    print("    without FHIRPath: the same call with every expression's value replayed from a recording of it "
          "(bench/floor.py): what a faster evaluator could not remove")
    for kind in WORKLOADS:
        small, large = (next(r for r in rows if r["workload"] == kind and r["resources"] == n) for n in SIZES)
        print(f"    ({kind}) 300 -> 10,000: x{large['median_ms'] / small['median_ms']:.1f}, "
              f"{(large['median_ms'] - small['median_ms']) * 1000 / (large['prefetch_resources'] - small['prefetch_resources']):.2f} "
              f"µs per extra prefetched resource")

    if not args.skip_http:
        results["http"], results["server"] = http, server = over_http(app, args.calls, args.seconds)
        print("\n(2) workload (a) over HTTP on loopback, production server (mm-cds serve --prod)")
        print(table(["chart", "clients", "driver", "requests", "median ms", "p95 ms", "p99 ms", "req/s", "errors", "load"],
                    [[r["resources"], r["clients"], r["driver"], r["requests"], r["median_ms"], r["p95_ms"], r["p99_ms"],
                      r["rps"], r["errors"], r["load"]] for r in http]))
        print(f"\n(3) start-up to /ready: {server['startup_s']:.2f} s; resident memory per worker after the runs (MB): "
              + ", ".join(f"{m:.0f}" for m in server["worker_rss_mb"]))
        print(pss_line(server["pss_mb"]))

    if not args.skip_fetch:
        results["fetch"] = fetch = fetch_path(app, stub_mode=args.stub)
        for label, key in (("at once", "no_delay"), ("+50 ms per request", "delay_50ms"),
                           ("+50 ms per request, _include ignored (the Medications read)", "delay_50ms_reads")):
            f = fetch[key]
            print(f"\n(4) fetch path ({args.stub} stub), workload (a) 300, no prefetch, FHIR server answering {label}: {f['queries']} keys and "
                  f"{f['medication_reads']} Medication reads (or _id searches) per call in {f['gets']} GETs, {f['cards']} cards; median {f['median_ms']:.0f} ms, "
                  f"p95 {f['p95_ms']:.0f} ms; the service's CPU {f['cpu_ms']:.1f} ms a call (load {f['load']})")

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    results["reference_ms"]["end"] = end = reference_now()
    (out / "workloads.json").write_text(json.dumps(results, indent=2))
    print(f"\nat the end: load average {os.getloadavg()[0]:.2f}, reference task {end:.2f} ms")


if __name__ == "__main__":
    main()
