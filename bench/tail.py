"""Where the 1-client tail over HTTP comes from (issue 12).

    .venv/bin/python bench/tail.py [--requests 1000] [--slow-ms 2]

Sends workload (a) at 300 resources in sequence (the Python client of bench/run.py) to the
production server (through bench/_tail_conf.py), twice: as configured, then with the
feedback writer's commits replaced by a no-op. Each worker records the span of every
request it handles, its writer (a child process) every commit it makes, and the script prints: the
client's median and p95, the workers' own request time, the commits' CPU and wall time,
and the requests more than --slow-ms over the workers' median, by what overlapped them: a
commit of their own worker's writer, of another worker's, or none (`overlaps`). The workers' counts
include the client's 20 warm-up requests and the readiness checks.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import configured_knowledge, instrumented_server, percentile, sequential  # noqa: E402
from workloads import request  # noqa: E402

Event = tuple[str, float, float, float]  # (request | commit, start, end, thread CPU seconds)


def overlaps(workers: dict[str, list[Event]], slow_ms: float) -> dict[str, tuple[int, int]]:
    """Per kind of overlap ("own worker's commit", "another worker's commit", "both", "none"):
    (requests, of which slow: more than `slow_ms` over the median of all requests)."""
    spans = [(w, e) for w, events in workers.items() for e in events if e[0] == "request"]
    if not spans:
        return {}
    median = statistics.median((e[2] - e[1]) * 1000 for _, e in spans)
    commits = [(w, e) for w, events in workers.items() for e in events if e[0] == "commit"]
    counted: dict[str, list[int]] = {}
    for worker, span in spans:
        own = any(c[1] < span[2] and c[2] > span[1] for w, c in commits if w == worker)
        other = any(c[1] < span[2] and c[2] > span[1] for w, c in commits if w != worker)
        kind = {(True, True): "both", (True, False): "own worker's commit",
                (False, True): "another worker's commit", (False, False): "none"}[(own, other)]
        row = counted.setdefault(kind, [0, 0])
        row[0] += 1
        row[1] += (span[2] - span[1]) * 1000 > median + slow_ms
    return {kind: (n, slow) for kind, (n, slow) in counted.items()}


def measured(service_id: str, body: dict, requests: int, no_writer: bool) -> tuple[dict, dict[str, list[Event]]]:
    out = tempfile.mkdtemp(prefix="mm-bench-tail-")
    env = {"MM_BENCH_TAIL_DIR": out, "MM_BENCH_NO_WRITER": "1" if no_writer else "0"}
    with instrumented_server("_tail_conf", env, Path(out) / "stderr") as base:
        client = sequential(f"{base}/cds-services/{service_id}", body, requests)
    workers: dict[str, list[Event]] = {}
    for path in glob.glob(f"{out}/events-*.json"):  # events-<worker pid>[-writer]: its writer's child with it
        workers.setdefault(Path(path).stem.split("-")[1], []).extend(tuple(e) for e in json.loads(Path(path).read_text()))
    return client, workers


def report(label: str, client: dict, workers: dict[str, list[Event]], slow_ms: float) -> None:
    handled = sorted((e[2] - e[1]) * 1000 for events in workers.values() for e in events if e[0] == "request")
    commits = [e for events in workers.values() for e in events if e[0] == "commit"]
    print(f"\n{label}: client median {client['median_ms']:.2f} ms, p95 {client['p95_ms']:.2f}; "
          f"in the workers median {statistics.median(handled):.2f}, p95 {percentile(handled, 95):.2f} "
          f"({len(handled)} requests, {len(workers)} workers)")
    if commits:
        print(f"  {len(commits)} commits: CPU median {statistics.median(e[3] for e in commits) * 1000:.2f} ms, "
              f"wall median {statistics.median((e[2] - e[1]) * 1000 for e in commits):.2f} ms")
    print(f"  requests more than {slow_ms:g} ms over the workers' median, by what overlapped them:")
    for kind, (n, slow) in sorted(overlaps(workers, slow_ms).items()):
        print(f"    {kind:24s} {n:5d} requests, {slow:4d} slow ({slow / n * 100:.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--slow-ms", type=float, default=2.0)
    args = parser.parse_args()
    service, body, _ = request("a", 300, configured_knowledge().services.values())
    for label, no_writer in (("as configured", False), ("commits replaced by a no-op", True)):
        client, workers = measured(service.id, body, args.requests, no_writer)
        report(label, client, workers, args.slow_ms)


if __name__ == "__main__":
    main()
