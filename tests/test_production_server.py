"""The production server: gunicorn with cds_service/gunicorn_conf.py, really started.

One instance (2 workers) serves the module's tests; the start with a broken artifact
gets its own. Log content (JSON, no patient data) is proved in test_logging.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from cds_service import feedback

from .support.gunicorn import GUNICORN, Gunicorn
from .support.ports import free_port
from .support.requests_ import empty_prefetch, order_sign
from .support.scrape import sample

ROOT = Path(__file__).resolve().parent.parent
SIGN = "/cds-services/mm-tcell-order-sign"

pytestmark = pytest.mark.gunicorn


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn")
    server = Gunicorn(workdir, workers="2", max_request_bytes="20000", feedback_wait="3")
    server.wait_ready()
    yield server
    server.stop()


def discovery(base: str) -> dict:
    return {s["id"]: s for s in requests.get(base + "/cds-services", timeout=10).json()["services"]}


def codes(cards: list[dict]) -> set[str]:
    return {c["source"]["topic"]["code"] for c in cards}


def test_gunicorn_serves_discovery_calls_health_ready_and_the_description(production, client):
    base = production.base
    services = discovery(base)
    assert services == {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    body = order_sign(prefetch=empty_prefetch(services["mm-tcell-order-sign"], {"resourceType": "Patient", "id": "p1"}))
    call = requests.post(base + SIGN, json=body, timeout=10)
    assert call.status_code == 200
    in_process = codes(client.post(SIGN, json=body).get_json()["cards"])
    assert in_process and codes(call.json()["cards"]) == in_process
    assert requests.get(base + "/health", timeout=10).json() == {"status": "ok"}
    ready = requests.get(base + "/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["knowledge"]["services"] == len(services) and len(ready.json()["knowledge"]["fingerprint"]) == 16
    assert requests.get(base + "/openapi.json", timeout=10).json()["openapi"] == "3.1.0"


def test_feedback_is_stored_by_the_workers(production):
    """The feedback writer (a thread and a database connection) is opened in each worker:
    one made in the master before the fork would leave the workers without it (503)."""
    base = production.base
    services = discovery(base)
    body = order_sign(prefetch=empty_prefetch(services["mm-tcell-order-sign"], {"resourceType": "Patient", "id": "p1"}))
    cards = requests.post(base + SIGN, json=body, timeout=10).json()["cards"]
    assert cards
    for card in cards:  # new connections: the kernel spreads them over both workers
        item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:05:31Z"}
        answer = requests.post(base + SIGN + "/feedback", json={"feedback": [item]}, timeout=10,
                               headers={"Connection": "close"})
        assert answer.status_code == 200, answer.text


def test_metrics_are_summed_over_the_workers(production):
    base = production.base
    before = sample(requests.get(base + "/metrics", timeout=10).text, "mm_cds_requests_total", endpoint="/ready")
    for _ in range(20):  # a new connection each: the kernel spreads them over both workers
        assert requests.get(base + "/ready", timeout=10, headers={"Connection": "close"}).status_code == 200
    text = requests.get(base + "/metrics", timeout=10).text
    assert sample(text, "mm_cds_requests_total", endpoint="/ready", status="200") - before == 20
    fingerprint = requests.get(base + "/ready", timeout=10).json()["knowledge"]["fingerprint"]
    assert sample(text, "mm_cds_knowledge_info", fingerprint=fingerprint) == 1
    assert sample(text, "mm_cds_request_seconds_bucket", endpoint="/ready", le="0.05") >= 20


def test_a_chunked_body_over_the_limit_is_413_under_gunicorn(production):
    body = json.dumps(order_sign()).encode() + b" " * 30000
    response = requests.post(production.base + SIGN, data=iter([body[:10000], body[10000:]]),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413
    assert response.json()["issue"][0]["diagnostics"] == "request body larger than 20000 bytes"


def test_a_broken_artifact_stops_gunicorn_before_any_worker_starts(tmp_path):
    broken = ROOT / "tests" / "broken" / "malformed-fhirpath"
    server = Gunicorn(tmp_path, site_dirs=str(broken))
    status = server.wait_exit()
    assert status != 0
    failure = [e for e in server.log_entries() if e.get("event") == "startup_failed"]
    assert len(failure) == 1 and failure[0]["level"] == "critical"
    assert ("PlanDefinition-bad-path.json: PlanDefinition/bad-path: PlanDefinition.action[0].condition[0]"
            ".expression.expression: FHIRPath does not parse: 'Patient..name.exists()'") in failure[0]["msg"]
    assert not any("Booting worker" in e.get("msg", "") for e in server.log_entries())
    assert server.metrics_dirs() == []  # the private metrics directory went with it


def test_a_bind_other_than_the_settings_is_refused(tmp_path):
    """The JWT start-up rule judged the host setting; gunicorn must not listen elsewhere."""
    elsewhere = f"127.0.0.1:{free_port()}"
    server = Gunicorn(tmp_path, [*GUNICORN, "--bind", elsewhere])
    assert server.wait_exit() != 0
    refusal = [e for e in server.log_entries() if e.get("event") == "startup_failed"]
    assert len(refusal) == 1 and f"refusing to bind {elsewhere}" in refusal[0]["msg"]
    assert not any("Listening at" in e.get("msg", "") for e in server.log_entries())


def test_gunicorn_refuses_to_start_while_the_go_live_gate_is_open(tmp_path):
    """The shipped knowledge has no linvoseltamab code and only unverified talquetamab codes:
    without the documented acceptance the master stops before any worker, naming each value
    set and why."""
    server = Gunicorn(tmp_path, accept_unverified_treatment_codes="")
    assert server.wait_exit() != 0
    failure = [e for e in server.log_entries() if e.get("event") == "startup_failed"]
    assert len(failure) == 1 and failure[0]["level"] == "critical"
    assert "go-live gate not met" in failure[0]["msg"]
    assert "talquetamab (Talquetamab): only unverified codes" in failure[0]["msg"]
    assert "linvoseltamab (Linvoseltamab): no code" in failure[0]["msg"]
    assert not any("Booting worker" in e.get("msg", "") for e in server.log_entries())


def test_gunicorn_accepting_the_open_value_sets_logs_critical_and_is_ready(tmp_path):
    server = Gunicorn(tmp_path, accept_unverified_treatment_codes="talquetamab,linvoseltamab")
    try:
        server.wait_ready()
        accepted = [e for e in server.log_entries() if e.get("event") == "go_live_accepted"]
        assert accepted and accepted[0]["level"] == "critical"
        assert set(accepted[0]["valueSets"]) == {"talquetamab", "linvoseltamab"}
        ready = requests.get(server.base + "/ready", timeout=10)
        assert ready.status_code == 200 and len(ready.json()["goLive"]["accepted"]) == 2
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _writers(master: int) -> dict[int, list[int]]:
    """Each worker's feedback-writer children (feedback/_process.py)."""
    return {w: [c for c in _children(w) if Path(f"/proc/{c}/comm").read_text().strip() == "mm-cds-writer"]
            for w in _children(master)}


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def _writers_of_every_worker(master: int, workers: int) -> dict[int, list[int]]:
    deadline = time.monotonic() + 30  # /health answered by one worker while the other boots
    while len(found := _writers(master)) < workers or not all(found.values()):
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    return found


def test_each_worker_writes_through_a_child_that_does_not_hold_the_port(production):
    writers = _writers_of_every_worker(production.process.pid, 2)
    assert len(writers) == 2 and all(len(children) == 1 for children in writers.values()), writers
    listening = _listening_inode(production.port)
    for worker, (child,) in writers.items():
        assert listening in _socket_inodes(worker)
        assert listening not in _socket_inodes(child)  # a child draining after a stop keeps no port bound


@pytest.mark.slow
def test_a_stop_writes_every_issued_card_and_ends_the_writer_children(tmp_path):
    server = Gunicorn(tmp_path, workers="2")
    server.wait_ready()
    try:
        services = discovery(server.base)
        body = order_sign(prefetch=empty_prefetch(services["mm-tcell-order-sign"], {"resourceType": "Patient", "id": "p1"}))
        issued = set()
        for _ in range(20):  # new connections: both workers
            answer = requests.post(server.base + SIGN, json=body, timeout=10, headers={"Connection": "close"})
            issued |= {card["uuid"] for card in answer.json()["cards"]}
        writers = [c for children in _writers_of_every_worker(server.process.pid, 2).values() for c in children]
    finally:
        assert server.stop() == 0, server.output()
    assert len(writers) == 2 and issued
    assert not [pid for pid in writers if Path(f"/proc/{pid}").exists()
                and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()]
    db = feedback.open_database("", str(tmp_path / "data"))
    conn = db.connect()
    try:
        in_db = {r["card_uuid"] for r in feedback.query(db, conn, "SELECT card_uuid FROM issued_cards")}
    finally:
        conn.close()
    assert issued <= in_db, f"{len(issued - in_db)} of {len(issued)} issued cards not written"
