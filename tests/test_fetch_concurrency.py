"""The fetch path is two round trips, not one per key (issue 12), proved by counting, never
by timing: every key of a call is in flight at once (a barrier the server holds each
search at opens only when all have arrived), so are the keys of two calls at once (the
executor's default size), and a key's Medication reads are sent while the other keys are
still unanswered. Then the transport: connections reused, the environment's
proxy and CA bundle honoured, compressed answers decoded.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from werkzeug.wrappers import Response

from cds_service import create_app, web
from cds_service.data import HttpTransport, _fetch
from cds_service.web._app import FETCH_CALLS_AT_ONCE, FETCH_READS_ALLOWANCE

from .conftest import NOW
from .support.fhir_server import FhirServer
from .support.requests_ import RXNORM, order_sign
from .test_fetch import PATIENT, SIGN, with_server
from .test_fetch_robustness import RawServer, read_request

HOLD = 10.0  # seconds a held request waits before giving up: only a failing test waits it
MEDICATION_SEARCHES = {"/fhir/MedicationRequest", "/fhir/MedicationAdministration", "/fhir/MedicationStatement"}


def _app(kb, **settings):
    return create_app({"fetch_timeout": 3 * HOLD, **settings}, kb=kb, clock=lambda: NOW)


def _gets_of_one_call(app, fhir: FhirServer) -> int:
    assert app.test_client().post(SIGN, json=with_server(order_sign(), fhir)).status_code == 200
    sent = len(fhir.requests)
    fhir.requests.clear()
    return sent


def _barrier_fault(parties: int):
    barrier = threading.Barrier(parties, timeout=HOLD)

    def fault(request):
        try:
            barrier.wait()  # opens when `parties` requests are in flight together
        except threading.BrokenBarrierError:
            return Response("not every key was in flight at once", status=500)
        return None

    return fault


def test_every_key_of_a_call_is_in_flight_at_once(kb):
    app = _app(kb)
    with FhirServer() as fhir:
        fhir.reset([PATIENT])
        keys = _gets_of_one_call(app, fhir)
        assert keys >= 20
        fhir.fault = _barrier_fault(keys)
        response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert fhir.max_in_flight >= keys


def test_the_keys_of_two_calls_at_once_are_in_flight_at_once(kb):
    """fetch_workers 0 (the default) sizes the executor for two calls' keys and their
    Medication reads; a smaller pool would make the last keys wait a round trip."""
    calls = FETCH_CALLS_AT_ONCE
    app = _app(kb)
    executor = web.state_of(app).fetch.executor
    with FhirServer() as fhir:
        fhir.reset([PATIENT])
        keys = _gets_of_one_call(app, fhir)
        assert executor._max_workers >= calls * (keys + FETCH_READS_ALLOWANCE)  # type: ignore[attr-defined]
        fhir.fault = _barrier_fault(calls * keys)
        with ThreadPoolExecutor(calls) as pool:
            answers = list(pool.map(lambda _: app.test_client().post(SIGN, json=with_server(order_sign(), fhir)),
                                    range(calls)))
        assert [a.status_code for a in answers] == [200] * calls, answers[0].get_data(as_text=True)


def test_medication_reads_are_sent_while_slower_keys_are_unanswered(kb):
    """The searches that name Medications answer at once; every other search is held until
    a Medication read arrives. Reads sent only after the slowest key would never arrive
    while one is held (each held search then gives up after HOLD seconds)."""
    app = _app(kb)
    tec = {"resourceType": "Medication", "id": "tec", "code": {"coding": [{"system": RXNORM, "code": "2619432"}]}}
    given = {"resourceType": "MedicationAdministration", "id": "a1", "status": "completed",
             "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/tec"},
             "effectiveDateTime": "2026-06-01"}
    read = threading.Event()
    held: list[bool] = []

    def fault(request):
        if request.path.startswith("/fhir/Medication/"):
            read.set()
        elif request.path not in MEDICATION_SEARCHES:
            held.append(read.wait(HOLD))
        return None

    with FhirServer() as fhir:
        fhir.reset([PATIENT, tec, given])
        fhir.fault = fault
        response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert [r.path for r in fhir.requests if r.path.startswith("/fhir/Medication/")] == ["/fhir/Medication/tec"]
    assert len(held) >= 20 and all(held), f"{held.count(False)} searches answered before any Medication read was sent"


# -- the transport -------------------------------------------------------------------------------------

ANSWER = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()


def _keep_alive(conn: socket.socket, seen: list[bytes], body: bytes = ANSWER, headers: bytes = b"") -> None:
    while True:
        seen.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (len(body), headers, body))


@pytest.fixture()
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    _fetch._proxy_for.cache_clear()
    yield monkeypatch
    _fetch._proxy_for.cache_clear()


def test_a_thread_reuses_its_keep_alive_connection(no_proxy_env):
    seen: list[bytes] = []
    server = RawServer(lambda conn: _keep_alive(conn, seen))
    try:
        transport = HttpTransport()
        for _ in range(5):
            assert transport.get(f"{server.base}/Patient/p1", {}, 2.0).body == ANSWER
        assert (len(seen), server.accepted) == (5, 1)
    finally:
        server.close()


def test_the_proxy_the_environment_names_is_used_and_no_proxy_is_honoured(no_proxy_env):
    seen: list[bytes] = []
    proxy = RawServer(lambda conn: _keep_alive(conn, seen))
    direct: list[bytes] = []
    target = RawServer(lambda conn: _keep_alive(conn, direct))
    try:
        no_proxy_env.setenv("HTTP_PROXY", proxy.base.rsplit("/fhir", 1)[0])
        assert HttpTransport().get("http://fhir.example.test/fhir/Patient/p1", {"Authorization": "Bearer t"},
                                   2.0).body == ANSWER
        assert seen and seen[0].startswith(b"GET http://fhir.example.test/fhir/Patient/p1 HTTP/1.1\r\n")
        assert b"Authorization: Bearer t" in seen[0]
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        _fetch._proxy_for.cache_clear()
        assert HttpTransport().get(f"{target.base}/Patient/p1", {}, 2.0).body == ANSWER
        assert len(seen) == 1 and direct and direct[0].startswith(b"GET /fhir/Patient/p1 HTTP/1.1\r\n")
    finally:
        proxy.close()
        target.close()


def test_compressed_answers_are_asked_for_and_decoded(no_proxy_env):
    seen: list[bytes] = []
    packed = gzip.compress(ANSWER)
    server = RawServer(lambda conn: _keep_alive(conn, seen, packed, b"Content-Encoding: gzip\r\n"))
    try:
        assert HttpTransport().get(f"{server.base}/Patient/p1", {}, 2.0).body == ANSWER
        assert b"Accept-Encoding: gzip, deflate" in seen[0]
    finally:
        server.close()


def test_the_ca_bundle_is_found_where_requests_finds_it(no_proxy_env, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    no_proxy_env.delenv("REQUESTS_CA_BUNDLE", raising=False)
    no_proxy_env.delenv("CURL_CA_BUNDLE", raising=False)
    default = _fetch._ca_bundle()["ca_certs"]
    assert default.endswith(".pem")
    no_proxy_env.setenv("CURL_CA_BUNDLE", str(bundle))
    assert _fetch._ca_bundle() == {"ca_certs": str(bundle)}
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path))
    assert _fetch._ca_bundle() == {"ca_cert_dir": str(tmp_path)}
