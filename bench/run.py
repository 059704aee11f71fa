"""The benchmark: `make bench` prints every table; bench/README.md says how to read them.

(a) in-process: one hook call (validate, assemble from prefetch, retrieve, evaluate every
    rule, render, check the response) per synthetic patient of ~50, 300, 3,000 and 10,000
    resources, per service; CPU time of this process (so other load on the machine
    counts less), median and p95 of repeated calls.
(b) end to end over HTTP on loopback against the production server (`mm-cds serve
    --prod`: gunicorn, its default workers and threads), keep-alive: sequential from one
    client, then 8 and 32 concurrent connections driven by wrk (a C load generator, so the
    client does not take the CPU from the server; a Python client is used when wrk is
    absent and the table says so). Median, p95, p99 and requests per second.
(c) start-up time (process start to /ready) and resident memory per worker.
(d) the fetch path: no prefetch, a loopback FHIR server adding 50 ms to every query: the
    call costs about the slowest query, not their sum.

Results are also written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory import pss_line, rss_mb, server_pss  # noqa: E402
from reference import machine, reference_now  # noqa: E402
from synthetic import make_patient, order_sign_context, patient_view_context  # noqa: E402

from cds_service import config, create_app, knowledge  # noqa: E402
from cds_service.service import call as call_hook  # noqa: E402
from tests.support.ehr import build_prefetch  # noqa: E402
from tests.support.fhir_server import FhirStore  # noqa: E402

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
SIZES = (50, 300, 3000, 10000)
HOOKS = {"order-sign": order_sign_context, "patient-view": patient_view_context}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("MM_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %f %f %f %f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    summary.duration / 1e6))
end
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def body_for(app, hook: str, n: int) -> tuple[object, dict]:
    state = app.extensions["mm_cds"]
    service = next(s for s in state.kb.services.values() if s.hook == hook)
    context = HOOKS[hook]()
    prefetch = build_prefetch(service.prefetch, context, FhirStore(make_patient(n, NOW)), NOW.date())
    return service, {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}


# -- (a) ---------------------------------------------------------------------------------------
def in_process(app, calls: int) -> list[dict]:
    state = app.extensions["mm_cds"]
    rows = []
    for n in SIZES:
        for hook in HOOKS:
            service, body = body_for(app, hook, n)
            for _ in range(5):
                call_hook(state.kb, service, body, NOW, state.fetch)
            times = []
            for _ in range(calls if n < 10000 else max(20, calls // 5)):
                started = time.process_time()
                outcome = call_hook(state.kb, service, body, NOW, state.fetch)
                times.append(time.process_time() - started)
            rows.append({"resources": n, "service": service.id, "calls": len(times),
                         "median_ms": statistics.median(times) * 1000, "p95_ms": percentile(times, 95) * 1000,
                         "cards": len(outcome.response["cards"]), "body_kb": len(json.dumps(body)) / 1024})
    return rows


# -- (b), (c) -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configured_knowledge() -> knowledge.KnowledgeBase:
    """The knowledge as the server started from the same environment loads it."""
    settings = config.load()
    return knowledge.load(settings.directories, settings.canonical_base, settings.prefetch_date_tokens)


@contextlib.contextmanager
def instrumented_server(conf: str, env: dict[str, str], stderr_path: Path) -> Iterator[str]:
    """gunicorn with the bench settings module `conf` (bench/_*_conf.py: the production
    settings plus accounting) on a free loopback port; yields its base URL once /ready
    answers, and stops it (its workers then write their accounting) on leaving."""
    port = free_port()
    env = dict(os.environ, MM_CDS_LOG_LEVEL="WARNING", MM_CDS_DATA_DIR=tempfile.mkdtemp(prefix="mm-bench-"),
               MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES="all", MM_CDS_PORT=str(port),
               PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]), **env)
    env.setdefault("MM_CDS_SERVICE_SECRET", "bench-secret-0123456789abcdef")
    with open(stderr_path, "wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", f"python:{conf}", "cds_service.wsgi:app"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start: " + stderr_path.read_text()[-2000:])
            try:
                if requests.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(30)


class ProductionServer:
    """`mm-cds serve --prod` on a free loopback port, started and stopped by the bench."""

    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The shipped knowledge does not meet the go-live gate: the bench accepts that explicitly.
        env = dict(os.environ, MM_CDS_LOG_LEVEL="WARNING", MM_CDS_DATA_DIR=tempfile.mkdtemp(prefix="mm-bench-"),
                   MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES="all")
        env.setdefault("MM_CDS_SERVICE_SECRET", "bench-secret-0123456789abcdef")  # the production server needs one
        started = time.monotonic()
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "mm-cds"), "serve", "--prod", "--port", str(self.port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=self.stderr)
        while time.monotonic() - started < 60:
            if self.process.poll() is not None:
                self.stderr.seek(0)
                raise SystemExit("the production server exited: " + self.stderr.read().decode(errors="replace")[-2000:])
            try:
                if requests.get(f"{self.base}/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        else:
            raise SystemExit("the production server did not become ready in 60 s")
        self.startup_s = time.monotonic() - started

    def _workers(self) -> list[str]:
        return subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout.split()

    def worker_rss_mb(self) -> list[float]:
        return [rss_mb(pid) for pid in self._workers()]

    def pss_mb(self) -> dict[str, float]:
        return server_pss(self.process.pid, self._workers())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def sequential(url: str, body: dict, calls: int) -> dict:
    session = requests.Session()
    data = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    times = []
    for i in range(calls + 20):
        started = time.perf_counter()
        response = session.post(url, data=data, headers=headers, timeout=30)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text[:200]
        if i >= 20:
            times.append(elapsed)
    total = sum(times)
    return {"clients": 1, "requests": len(times), "median_ms": statistics.median(times) * 1000,
            "p95_ms": percentile(times, 95) * 1000, "p99_ms": percentile(times, 99) * 1000,
            "rps": len(times) / total, "errors": 0, "driver": "python"}


def concurrent_wrk(url: str, body: dict, clients: int, seconds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body_file, script = Path(tmp) / "body.json", Path(tmp) / "post.lua"
        body_file.write_text(json.dumps(body))
        script.write_text(WRK_SCRIPT)
        done = subprocess.run(["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "10s",
                               "-s", str(script), url], capture_output=True, text=True,
                              env=dict(os.environ, MM_BENCH_BODY=str(body_file)))
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    count, bad_status, socket_errors, p50, p95, p99, duration = line.split()[1:]
    return {"clients": clients, "requests": int(count), "median_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "rps": int(count) / float(duration), "errors": int(bad_status) + int(socket_errors),
            "driver": "wrk"}


def concurrent_python(url: str, body: dict, clients: int, seconds: int) -> dict:
    data, stop, lock, times, errors = json.dumps(body), time.monotonic() + seconds, threading.Lock(), [], [0]

    def client():
        session = requests.Session()
        while time.monotonic() < stop:
            started = time.perf_counter()
            ok = session.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=30).status_code == 200
            with lock:
                times.append(time.perf_counter() - started)
                errors[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "requests": len(times), "median_ms": statistics.median(times) * 1000,
            "p95_ms": percentile(times, 95) * 1000, "p99_ms": percentile(times, 99) * 1000,
            "rps": len(times) / (time.monotonic() - began), "errors": errors[0], "driver": "python threads"}


def end_to_end(app, calls: int, seconds: int) -> tuple[list[dict], dict]:
    server = ProductionServer()
    rows = []
    try:
        for n in (300, 10000):
            service, body = body_for(app, "order-sign", n)
            url = f"{server.base}/cds-services/{service.id}"
            rows.append({"resources": n, **sequential(url, body, calls if n < 10000 else calls // 3)})
            for clients in (8, 32):
                run = concurrent_wrk if shutil.which("wrk") else concurrent_python
                rows.append({"resources": n, **run(url, body, clients, seconds)})
        memory = {"startup_s": server.startup_s, "worker_rss_mb": server.worker_rss_mb(), "pss_mb": server.pss_mb()}
    finally:
        server.stop()
    return rows, memory


# -- (d) ----------------------------------------------------------------------------------------
def fetch_path(app) -> dict:
    """The same call fetching every key, against a FHIR server without and with 50 ms per query."""
    state = app.extensions["mm_cds"]
    service = next(s for s in state.kb.services.values() if s.hook == "order-sign")
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "chart.json"
        chart.write_text(json.dumps(make_patient(300, NOW)))
        for delay in (0.0, 0.05):
            stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fhir_stub.py"), str(chart), str(delay)],
                                    stdout=subprocess.PIPE, text=True)
            try:
                base = stub.stdout.readline().strip()
                body = {"hook": "order-sign", "hookInstance": str(uuid.uuid4()), "context": order_sign_context(),
                        "fhirServer": base, "fhirAuthorization": {"access_token": "test-token", "token_type": "Bearer",
                                                                  "expires_in": 300, "scope": "user/*.read", "subject": "bench"}}
                times = []
                for _ in range(7):
                    started = time.perf_counter()
                    outcome = call_hook(state.kb, service, body, NOW, state.fetch, explain=True)
                    times.append(time.perf_counter() - started)
                reports = outcome.response["extension"]["org.myeloma-cds.explain"]["dataRequirements"].values()
                result[delay] = {"call_median_ms": statistics.median(times) * 1000,
                                 "queries": sum(1 for r in reports if r["source"] == "fetch"
                                             and not r.get("note", "").startswith("narrowed"))}
            finally:
                stub.terminate()
                stub.wait(10)
    queries = result[0.05]["queries"]
    return {"queries": queries, "delay_ms": 50, "sum_of_delays_ms": queries * 50,
            "call_median_ms_no_delay": result[0.0]["call_median_ms"], "call_median_ms": result[0.05]["call_median_ms"]}


# -- report -------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each concurrent run")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    app = create_app({"log_level": "WARNING"}, clock=lambda: NOW)
    start = reference_now()
    results: dict = {"machine": machine(start), "when": NOW.isoformat(), "reference_ms": {"start": start}}
    print(f"machine: {results['machine']}\n")

    results["in_process"] = rows = in_process(app, args.calls)
    print("(a) in-process, one hook call (CPU ms)")
    print(table(["resources", "service", "calls", "median ms", "p95 ms", "µs per resource", "cards", "request KB"],
                [[r["resources"], r["service"], r["calls"], r["median_ms"], r["p95_ms"],
                  r["median_ms"] * 1000 / r["resources"], r["cards"], round(r["body_kb"])] for r in rows]))

    if not args.skip_http:
        results["http"], results["server"] = http, server = end_to_end(app, args.calls, args.seconds)
        print("\n(b) end to end over HTTP on loopback, production server (mm-cds serve --prod), order-sign")
        print(table(["resources", "clients", "driver", "requests", "median ms", "p95 ms", "p99 ms", "req/s", "errors"],
                    [[r["resources"], r["clients"], r["driver"], r["requests"], r["median_ms"], r["p95_ms"], r["p99_ms"],
                      r["rps"], r["errors"]] for r in http]))
        print(f"\n(c) start-up to /ready: {server['startup_s']:.2f} s; resident memory per worker (MB): "
              + ", ".join(f"{m:.0f}" for m in server["worker_rss_mb"]))
        print(pss_line(server["pss_mb"]))

    results["fetch"] = fetch = fetch_path(app)
    print(f"\n(d) fetch path, no prefetch: {fetch['queries']} keys fetched per call. Call median with the FHIR "
          f"server answering at once: {fetch['call_median_ms_no_delay']:.0f} ms; with 50 ms added to every query: "
          f"{fetch['call_median_ms']:.0f} ms (sequential would add {fetch['sum_of_delays_ms']} ms)")

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    results["reference_ms"]["end"] = end = reference_now()
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"\nat the end: reference task {end:.2f} ms")


if __name__ == "__main__":
    main()
