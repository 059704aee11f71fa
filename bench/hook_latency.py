"""Start-up time and order-sign latency for one scenario patient, printed as a table.

    .venv/bin/python bench/hook_latency.py [--calls 500] [--scenario NAME]

Start-up: wall time of a fresh process importing the package and building the app
(knowledge load + validation + UCUM registry), median of 3.
Latency: one order-sign call with full prefetch, as an EHR sends it, to the service on
loopback (werkzeug threaded server, keep-alive client), sequentially; and the same call
in-process (no HTTP), to separate the engine from the transport.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
import yaml
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service import create_app, hooks  # noqa: E402
from tests.support.ehr import build_prefetch  # noqa: E402
from tests.support.fhir_server import FhirStore  # noqa: E402
from tests.support.harness import EXAMPLE_SITE, Scenario, load_library  # noqa: E402

DEFAULT = "INF-4 fires for IgG 3.5 g/L with a teclistamab order"


def startup_seconds(runs: int = 3) -> float:
    code = "import time; t=time.perf_counter(); from cds_service import create_app; create_app({'log_level':'WARNING'})"
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def find_scenario(name: str) -> Scenario:
    library = load_library()
    for path in sorted((ROOT / "tests" / "scenarios").glob("[!_]*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for entry in raw["scenarios"]:
            if entry["name"] == name:
                return Scenario.from_yaml(entry, raw.get("defaults") or {}, library)
    raise SystemExit(f"no scenario named {name!r}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def row(label: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (f"| {label:<42} | {len(ms):>5} | {statistics.median(ms):>8.2f} | {percentile(ms, 95):>8.2f} "
            f"| {percentile(ms, 99):>8.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--scenario", default=DEFAULT)
    args = parser.parse_args()
    scenario = find_scenario(args.scenario)
    app = create_app({"log_level": "WARNING", "site_dirs": (str(EXAMPLE_SITE),)}, clock=lambda: scenario.now)
    state = app.extensions["mm_cds"]
    service = next(s for s in state.kb.services.values() if s.hook == scenario.hook)
    context = scenario.context()
    prefetch = build_prefetch(service.prefetch, context, FhirStore(scenario.chart), scenario.now.date())
    body = {"hook": scenario.hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}

    in_process = []
    for i in range(args.calls + 50):
        started = time.perf_counter()
        outcome = hooks.call(state.kb, service, body, scenario.now, state.fetch)
        if i >= 50:
            in_process.append(time.perf_counter() - started)
    codes = sorted(c["source"]["topic"]["code"] for c in outcome.response["cards"])

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cds-services/{service.id}"
    session = requests.Session()
    http = []
    for i in range(args.calls + 50):
        started = time.perf_counter()
        response = session.post(url, json=body, timeout=10)
        if i >= 50:
            http.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    server.shutdown()

    print(f"scenario: {scenario.name}  ({len(scenario.chart)} chart resources, cards: {', '.join(codes)})")
    print(f"start-up (fresh process, import + load + validate, median of 3): {startup_seconds():.2f} s; "
          f"knowledge load alone: {state.kb.load_seconds:.2f} s ({len(state.kb.files)} files)")
    print("| measurement                                | calls |  median  |   p95    |   p99    |")
    print("|--------------------------------------------|-------|----------|----------|----------|")
    print(row("order-sign in-process (ms)", in_process))
    print(row("order-sign HTTP loopback, keep-alive (ms)", http))


if __name__ == "__main__":
    main()
