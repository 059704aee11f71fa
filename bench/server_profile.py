"""Where a request's CPU goes in a gunicorn worker, around `service.call()` (issue 12).

    .venv/bin/python bench/server_profile.py [--workers 1] [--threads 4] [--clients 4] [--seconds 10]

Starts the production server (cds_service/gunicorn_conf.py, through bench/_server_profile_conf.py,
which adds per-thread CPU accounting: time.thread_time around each piece), drives workload (a)
at 300 resources with wrk (a Python client with --clients 1), and prints the CPU of each piece
per request: what is not `service.call()` is the server layer. The feedback writer's commits
run in a child process of each worker (cds_service/feedback/_process.py), counted apart.
Thread CPU, so the load of the machine counts less than in wall-clock numbers; the load
average is printed anyway. Then the context switches per request of the workers' and their
writer processes' threads during the run: a thread that waits for the interpreter lock, a
socket or a lock sleeps (a voluntary switch), so `--clients 1` against `--clients 4` on one
worker shows what requests in flight together cost one another in a process
(docs/operations.md, eleventh session).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _writer_child import context_switches  # noqa: E402
from run import concurrent_wrk, configured_knowledge, instrumented_server, sequential  # noqa: E402
from workloads import request  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    service, body, _ = request("a", 300, configured_knowledge().services.values())
    out = tempfile.mkdtemp(prefix="mm-bench-profile-")
    env = {"MM_BENCH_PROFILE_DIR": out, "MM_CDS_WORKERS": str(args.workers), "MM_CDS_THREADS": str(args.threads)}
    with instrumented_server("_server_profile_conf", env, Path(out) / "stderr") as base:
        url = f"{base}/cds-services/{service.id}"
        started_load = os.getloadavg()[0]
        processes = _processes(out)
        before = {role: _switches(pids) for role, pids in processes.items()}
        result = concurrent_wrk(url, body, args.clients, args.seconds) if args.clients > 1 \
            else sequential(url, body, 100 * args.seconds)
        switched = {role: [b - a for a, b in zip(before[role], _switches(pids), strict=True)]
                    for role, pids in processes.items()}
    spent: collections.Counter[str] = collections.Counter()
    for path in glob.glob(f"{out}/acct-*.json"):
        spent.update(json.loads(Path(path).read_text()))
    n = spent["gunicorn handle (whole request)#"]
    print(f"{args.workers} worker(s) x {args.threads} threads, {args.clients} client(s): {result['requests']} requests, "
          f"{result['rps']:.0f}/s, median {result['median_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
          f"load {started_load:.2f}-{os.getloadavg()[0]:.2f}\n")
    print("CPU per request (ms), thread time:")
    for name in sorted((k for k in spent if not k.endswith("#")), key=lambda k: -spent[k]):
        print(f"  {spent[name] / n * 1000:8.3f}  {name}")
    layer = (spent["worker process, all threads"] - spent["service.call()"]) / n * 1000
    print(f"\n  server layer (worker process minus service.call()): {layer:.3f} ms")
    both = spent["worker process, all threads"] + spent["feedback writer process, all threads"]
    print(f"  a request's CPU, the workers and their feedback writer processes: {both / n * 1000:.3f} ms")
    print("\nContext switches per request during the run, voluntary / involuntary:")
    for role, (voluntary, involuntary) in switched.items():
        print(f"  {voluntary / result['requests']:6.1f} / {involuntary / result['requests']:4.1f}  {role}, all threads")


def _processes(out: str) -> dict[str, list[int]]:
    """The workers and their writer children, as each worker wrote them once forked."""
    named = [json.loads(Path(p).read_text()) for p in glob.glob(f"{out}/pids-*.json")]
    return {"workers": [p["worker"] for p in named],
            "feedback writer processes": [p["writer"] for p in named if p["writer"]]}


def _switches(pids: list[int]) -> tuple[int, int]:
    counts = [context_switches(pid) for pid in pids]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


if __name__ == "__main__":
    main()
