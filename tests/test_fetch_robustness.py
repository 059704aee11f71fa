"""Fetch robustness: the call's one deadline covers body bytes, stale keep-alive
connections are retried once, next links are compared after normalisation.

Each test talks only to loopback servers it starts itself (tests/support/loopback.py's
raw sockets where werkzeug cannot misbehave the way a real server does).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cds_service import create_app
from cds_service.data import HttpTransport, same_server
from cds_service.errors import FetchError

from .conftest import NOW
from .support.fhir_server import FhirServer
from .support.requests_ import order_sign
from .test_fetch import LOW_IGG, PATIENT, SIGN, codes, with_server

FETCH_TIMEOUT = 1.0


class RawServer:
    """A loopback HTTP server written on sockets: `handle(conn)` answers each connection."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}/fhir"
        self.accepted = 0
        self.open = 0
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def trickle_body(conn: socket.socket) -> None:
    """Headers at once, then a 100 kB Content-Length body one byte every 0.5 s."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(100000):
        conn.sendall(b" ")
        time.sleep(0.5)


def trickle_headers(conn: socket.socket) -> None:
    """The status line and headers one byte every 0.5 s (never finished)."""
    read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000:
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.native
@pytest.mark.parametrize("handler", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_a_trickling_server_is_cut_at_the_deadline_and_the_threads_are_free_at_once(kb, handler):
    # Enough fetch threads for one call's keys and a few more, not for two calls' keys:
    # if the first call's threads stayed busy, the second call could not fetch in time.
    app = create_app({"fetch_timeout": FETCH_TIMEOUT, "fetch_workers": 24}, kb=kb, clock=lambda: NOW)
    slow = RawServer(handler)
    try:
        with FhirServer() as fhir:  # warm: the fetch threads and the watchdog exist
            fhir.reset([PATIENT, LOW_IGG])
            assert app.test_client().post(SIGN, json=with_server(order_sign(), fhir)).status_code == 200
        started = time.monotonic()
        response = app.test_client().post(SIGN, json=with_server(order_sign(), slow))  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
        assert response.status_code == 412, response.get_data(as_text=True)
        assert "could not be fetched (timeout)" in response.get_json()["issue"][0]["diagnostics"]
        assert elapsed < FETCH_TIMEOUT + 0.1, elapsed
        assert slow.accepted >= 10  # every key was in flight on its own connection
        # the service closed every connection at the deadline: the server sees them end
        waited = time.monotonic()
        while slow.open and time.monotonic() - waited < 1.0:
            time.sleep(0.01)
        assert slow.open == 0, f"{slow.open} connections still held open"
        with FhirServer() as fhir:
            fhir.reset([PATIENT, LOW_IGG])
            started = time.monotonic()
            following = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
            assert following.status_code == 200, following.get_data(as_text=True)
            assert "INF-4" in codes(following)
            assert time.monotonic() - started < FETCH_TIMEOUT
    finally:
        slow.close()


@pytest.mark.slow
@pytest.mark.native
@pytest.mark.alone  # nine whole calls at once, each within the 1 s deadline: fails with one core busy (conftest)
def test_many_timed_out_calls_do_not_starve_the_calls_after_them(kb):
    """Nine trickled calls at once, then nine good calls at once: all good ones answer 200."""
    app = create_app({"fetch_timeout": FETCH_TIMEOUT}, kb=kb, clock=lambda: NOW)
    slow = RawServer(trickle_body)
    try:
        with ThreadPoolExecutor(9) as pool:
            bad = list(pool.map(lambda _: app.test_client().post(SIGN, json=with_server(order_sign(), slow)).status_code,
                                range(9)))
        assert bad == [412] * 9
        with FhirServer() as fhir, ThreadPoolExecutor(9) as pool:
            fhir.reset([PATIENT, LOW_IGG])
            good = list(pool.map(lambda _: app.test_client().post(SIGN, json=with_server(order_sign(), fhir)).status_code,
                                 range(9)))
        assert good == [200] * 9
    finally:
        slow.close()


ANSWER = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()


def closes_after_one_answer(conn: socket.socket) -> None:
    """Answers the first request with keep-alive, then, like a server whose idle timeout
    fired as the next request arrived, reads the next request and closes without answering."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nConnection: keep-alive\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
    read_request(conn)


def test_a_get_on_a_stale_keep_alive_connection_is_retried_once_on_a_fresh_one():
    server = RawServer(closes_after_one_answer)
    try:
        transport = HttpTransport()
        first = transport.get(f"{server.base}/Patient/p1", {}, 2.0)
        second = transport.get(f"{server.base}/Patient/p1", {}, 2.0)  # the pooled connection is stale
        assert (first.status, json.loads(first.body)) == (200, {"resourceType": "Patient", "id": "p1"})
        assert (second.status, json.loads(second.body)) == (200, {"resourceType": "Patient", "id": "p1"})
        assert server.accepted == 2  # the retry opened a fresh connection
    finally:
        server.close()


def test_a_connection_that_keeps_failing_is_still_a_connection_error():
    def always_closes(conn: socket.socket) -> None:
        read_request(conn)

    server = RawServer(always_closes)
    try:
        with pytest.raises(FetchError) as info:
            HttpTransport().get(f"{server.base}/Patient/p1", {}, 2.0)
        assert info.value.kind == "connection"
        assert server.accepted == 2  # one retry, not more
    finally:
        server.close()


def test_a_service_call_after_the_fhir_server_closed_idle_connections_succeeds(kb):
    app = create_app({"fetch_timeout": FETCH_TIMEOUT}, kb=kb, clock=lambda: NOW)
    with FhirServer(idle_timeout=0.3) as fhir:
        fhir.reset([PATIENT, LOW_IGG])
        for _ in range(2):
            assert app.test_client().post(SIGN, json=with_server(order_sign(), fhir)).status_code == 200
        # the service kept its connections open between requests and calls
        assert fhir.accepted < len(fhir.requests), (fhir.accepted, len(fhir.requests))
        before = fhir.accepted
        time.sleep(0.6)  # the server has closed every keep-alive connection the service holds
        response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert "INF-4" in codes(response)
        assert fhir.accepted > before  # it noticed and connected again


BASE = "https://fhir.example.org/r4"


@pytest.mark.parametrize("url, same", [
    (f"{BASE}/Observation?page=2", True),
    ("HTTPS://FHIR.Example.ORG/r4/Observation?page=2", True),  # scheme and host case
    ("https://fhir.example.org:443/r4/Observation", True),  # the default port
    ("https://fhir.example.org:8443/r4/Observation", False),
    ("http://fhir.example.org/r4/Observation", False),
    (f"{BASE}/../../admin/page2", False),
    (f"{BASE}/Observation/../../admin", False),
    (f"{BASE}/./Observation", False),
    (f"{BASE}/%2e%2e/admin", False),
    (f"{BASE}/%2E%2E%2Fadmin", False),
    (f"{BASE}/%252e%252e/admin", False),
    (f"{BASE}\\..\\admin", False),
    ("https://user@fhir.example.org/r4/Observation", False),  # userinfo
    ("https://fhir.example.org@evil.example/r4/Observation", False),
    ("https://fhir.example.org/r4x/Observation", False),  # not under the base path
    ("https://[::1/r4/Observation", False),
    ("ftp://fhir.example.org/r4/Observation", False),
])
def test_same_server_compares_normalised_urls(url, same):
    assert same_server(BASE, url) is same


def _igg_page_then(client, next_url: str) -> dict:
    """Prefetch with every key empty but the patient, and an IgG page whose next link is `next_url`."""
    keys = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}["mm-tcell-order-sign"]["prefetch"]
    prefetch: dict = {key: None for key in keys}
    prefetch["patient"] = PATIENT
    prefetch["igg"] = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                       "link": [{"relation": "next", "url": next_url}]}
    return prefetch


@pytest.mark.parametrize("path", ["/fhir/../../admin/page2", "/fhir/%2e%2e/admin/page2", "/fhir/./../admin/page2"])
def test_a_next_link_with_dot_segments_is_not_followed_and_the_token_stays_home(kb, path, client):
    app = create_app({"fetch_timeout": FETCH_TIMEOUT}, kb=kb, clock=lambda: NOW)
    with FhirServer() as fhir:
        fhir.reset([PATIENT, LOW_IGG])
        prefetch = _igg_page_then(client, fhir.base[: -len("/fhir")] + path)
        response = app.test_client().post(SIGN, json=with_server(order_sign(prefetch=prefetch), fhir))
        assert response.status_code == 412
        assert response.get_json()["issue"][0]["expression"] == ["igg"]
        assert "outside fhirServer" in response.get_json()["issue"][0]["diagnostics"]
        assert fhir.requests == []  # nothing sent, to /admin or anywhere


def test_a_next_link_differing_only_in_case_and_default_form_is_followed(kb, client):
    app = create_app({"fetch_timeout": FETCH_TIMEOUT}, kb=kb, clock=lambda: NOW)
    with FhirServer() as fhir:
        fhir.reset([PATIENT, LOW_IGG])
        prefetch = _igg_page_then(client, "HTTP" + fhir.base[4:] + "/Observation?patient=p1")
        response = app.test_client().post(SIGN, json=with_server(order_sign(prefetch=prefetch), fhir))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert "INF-4" in codes(response)
        assert [r.authorization for r in fhir.requests] == ["Bearer test-token"]
