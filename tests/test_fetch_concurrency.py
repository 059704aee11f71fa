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
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from werkzeug.wrappers import Response

from cds_service import create_app, web
from cds_service.data import HttpTransport, _http
from cds_service.errors import FetchError
from cds_service.web._app import FETCH_CALLS_AT_ONCE, FETCH_READS_ALLOWANCE

from .conftest import NOW
from .support import tls
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
        assert keys >= 10  # the searches of 40 keys, merged where one answers several (data/_searches.py)
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
        fhir.ignore_include = True  # a server without _include: the Medication is read
        fhir.fault = fault
        response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert [r.path for r in fhir.requests if r.path.startswith("/fhir/Medication/")] == ["/fhir/Medication/tec"]
    assert len(held) >= 8 and all(held), f"{held.count(False)} searches answered before any Medication read was sent"


# -- the transport -------------------------------------------------------------------------------------

ANSWER = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()


def _keep_alive(conn: socket.socket, seen: list[bytes], body: bytes = ANSWER, headers: bytes = b"") -> None:
    while True:
        seen.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (len(body), headers, body))


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
        _http._proxy_for.cache_clear()
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


def _chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:7], body[7:])) + b"0\r\n\r\n"


def _raw_deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


@pytest.mark.parametrize("packed, headers", [
    (zlib.compress(ANSWER), b"Content-Encoding: deflate\r\n"),
    (_raw_deflate(ANSWER), b"Content-Encoding: deflate\r\n"),  # raw deflate, as some servers send it
    (_chunked(ANSWER), b"Transfer-Encoding: chunked\r\n"),
    (_chunked(gzip.compress(ANSWER)), b"Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"),
], ids=["deflate", "raw-deflate", "chunked", "chunked-gzip"])
def test_answers_in_every_framing_and_encoding_servers_use_are_read_whole(no_proxy_env, packed, headers):
    seen: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        while True:
            seen.append(read_request(conn))
            length = b"" if b"chunked" in headers else b"Content-Length: %d\r\n" % len(packed)
            conn.sendall(b"HTTP/1.1 200 OK\r\n%s%s\r\n%s" % (length, headers, packed))

    server = RawServer(answer)
    try:
        transport = HttpTransport()
        assert [transport.get(f"{server.base}/Patient/p1", {}, 2.0).body for _ in range(2)] == [ANSWER, ANSWER]
        assert server.accepted == 1  # read to its end, so the connection was reused
    finally:
        server.close()


def test_a_compressed_answer_is_inflated_piece_by_piece_within_the_byte_budget(no_proxy_env):
    bomb = gzip.compress(b" " * (64 << 20))  # 64 MiB of spaces in about 64 KiB
    server = RawServer(lambda conn: _keep_alive(conn, [], bomb, b"Content-Encoding: gzip\r\n"))
    try:
        tracemalloc.start()
        with pytest.raises(FetchError) as info:
            HttpTransport(max_bytes=1 << 20).get(f"{server.base}/Patient/p1", {}, 5.0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert info.value.kind == "too_large"
        assert peak < 8 << 20, f"{peak >> 20} MiB held to refuse a 1 MiB budget"
    finally:
        server.close()


def test_search_parameters_go_out_percent_encoded_as_strict_servers_require(no_proxy_env):
    seen: list[bytes] = []
    server = RawServer(lambda conn: _keep_alive(conn, seen))
    try:
        HttpTransport().get(f"{server.base}/Observation?code=http://loinc.org|2465-3&name=Zoë Ann&note=50%", {}, 2.0)
        HttpTransport().get(f"{server.base}/Observation?code=http://loinc.org%7c2465-3", {}, 2.0)
        assert [r.split(b"\r\n")[0] for r in seen] == [
            b"GET /fhir/Observation?code=http://loinc.org%7C2465-3&name=Zo%C3%AB%20Ann&note=50%25 HTTP/1.1",
            b"GET /fhir/Observation?code=http://loinc.org%7c2465-3 HTTP/1.1",  # already encoded: as it was
        ]
    finally:
        server.close()


def test_an_answer_that_closes_the_connection_is_not_kept_and_the_next_get_connects_again(no_proxy_env):
    def answer_and_close(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))

    server = RawServer(answer_and_close)
    try:
        transport = HttpTransport()
        assert [transport.get(f"{server.base}/Patient/p1", {}, 2.0).body for _ in range(3)] == [ANSWER] * 3
        assert server.accepted == 3
    finally:
        server.close()


def test_a_body_cut_short_of_its_length_is_a_connection_error_not_a_short_answer(no_proxy_env):
    def cut(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER) + 10, ANSWER))

    server = RawServer(cut)
    try:
        with pytest.raises(FetchError) as info:
            HttpTransport().get(f"{server.base}/Patient/p1", {}, 2.0)
        assert info.value.kind == "connection"
        assert server.accepted == 2  # retried once
    finally:
        server.close()


def test_a_host_name_that_does_not_resolve_is_a_connection_error_tried_twice(no_proxy_env, monkeypatch):
    asked: list[str] = []

    def no_such_host(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(FetchError) as info:
        HttpTransport().get("http://fhir.hospital.example/fhir/Patient/p1", {}, 2.0)
    assert (info.value.kind, info.value.reason) == ("connection", "connection failed: gaierror")
    assert asked == ["fhir.hospital.example"] * 2


def test_the_ca_bundle_is_found_where_requests_finds_it(no_proxy_env, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    no_proxy_env.delenv("REQUESTS_CA_BUNDLE", raising=False)
    no_proxy_env.delenv("CURL_CA_BUNDLE", raising=False)
    default = _http._ca_bundle()["ca_certs"]
    assert default.endswith(".pem")
    no_proxy_env.setenv("CURL_CA_BUNDLE", str(bundle))
    assert _http._ca_bundle() == {"ca_certs": str(bundle)}
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path))
    assert _http._ca_bundle() == {"ca_cert_dir": str(tmp_path)}


# -- TLS: the service's trust store decides, and the token goes only where it trusts --------------------

@pytest.fixture()
def tls_server(tmp_path):
    """A keep-alive HTTPS server on 127.0.0.1 whose certificate a fresh test CA issued for
    `names` (ca.pem in tmp_path); yields (base URL, requests seen, the server)."""
    issue = tls.authority(tmp_path)
    servers = []

    def start(names: list[str]):
        context = tls.server_context(*issue("server", names))
        seen: list[bytes] = []
        server = RawServer(lambda conn: _keep_alive(context.wrap_socket(conn, server_side=True), seen))
        servers.append(server)
        return server.base.replace("http://", "https://"), seen, server

    yield start
    for server in servers:
        server.close()


def test_https_to_a_server_the_ca_bundle_trusts_is_verified_and_kept_alive(no_proxy_env, tls_server, tmp_path):
    base, seen, server = tls_server(["127.0.0.1", "localhost"])
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    transport = HttpTransport()
    for _ in range(3):
        assert transport.get(f"{base}/Patient/p1", {"Authorization": "Bearer t"}, 2.0).body == ANSWER
    assert (len(seen), server.accepted) == (3, 1)
    assert seen[0].startswith(b"GET /fhir/Patient/p1 HTTP/1.1\r\n") and b"Authorization: Bearer t" in seen[0]


@pytest.mark.parametrize("names, trusted", [(["127.0.0.1"], False), (["fhir.example.test"], True)],
                         ids=["unknown-authority", "other-hostname"])
def test_https_to_a_server_it_cannot_verify_is_refused_before_the_token_is_sent(no_proxy_env, tls_server, tmp_path,
                                                                                 names, trusted):
    base, seen, _ = tls_server(names)
    if trusted:
        no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    with pytest.raises(FetchError) as info:
        HttpTransport().get(f"{base}/Patient/p1", {"Authorization": "Bearer t"}, 2.0)
    assert (info.value.kind, info.value.reason.split(":")[0]) == ("request", "the TLS certificate is not trusted")
    assert seen == []
