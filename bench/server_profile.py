"""Where a request's CPU goes in a gunicorn worker, around `service.call()` (issue 12).

    .venv/bin/python bench/server_profile.py [--workers 1] [--threads 4] [--clients 4] [--seconds 10]

Starts the production server (cds_service/gunicorn_conf.py, through bench/_server_profile_conf.py,
which adds per-thread CPU accounting: time.thread_time around each piece), drives workload (a)
at 300 resources with wrk (a Python client with --clients 1), and prints the CPU of each piece
per request: what is not `service.call()` is the server layer. Thread CPU, so the load of the
machine counts less than in wall-clock numbers; the load average is printed anyway.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import concurrent_wrk, free_port, sequential  # noqa: E402
from workloads import request  # noqa: E402

from cds_service import config, knowledge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    settings = config.load()
    kb = knowledge.load(settings.directories, settings.canonical_base, settings.prefetch_date_tokens)
    service, body, _ = request("a", 300, kb.services.values())
    out, port = tempfile.mkdtemp(prefix="mm-bench-profile-"), free_port()
    env = dict(os.environ, MM_CDS_LOG_LEVEL="WARNING", MM_CDS_DATA_DIR=tempfile.mkdtemp(prefix="mm-bench-"),
               MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES="all", MM_CDS_PORT=str(port), MM_BENCH_PROFILE_DIR=out,
               MM_CDS_WORKERS=str(args.workers), MM_CDS_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]))
    env.setdefault("MM_CDS_SERVICE_SECRET", "bench-secret-0123456789abcdef")
    with open(Path(out) / "stderr", "wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:_server_profile_conf",
                                   "cds_service.wsgi:app"], env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start: " + (Path(out) / "stderr").read_text()[-2000:])
        try:
            if requests.get(base + "/ready", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    url = f"{base}/cds-services/{service.id}"
    started_load = os.getloadavg()[0]
    try:
        result = concurrent_wrk(url, body, args.clients, args.seconds) if args.clients > 1 \
            else sequential(url, body, 100 * args.seconds)
    finally:
        server.terminate()
        server.wait(30)
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


if __name__ == "__main__":
    main()
