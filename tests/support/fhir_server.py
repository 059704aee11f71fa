"""A small FHIR R4 server on loopback, for tests and benchmarks.

It serves one in-memory chart: reads (Type/id) and searches with the parameters the
service's prefetch templates use (patient, code, status, the date parameters with
ge/gt/le/lt), paged with Bundle.link next. Unknown search parameters are refused with
400, so a template the service should not send fails loudly. Like a real server, `code`
on MedicationRequest/-Administration/-Statement matches medicationCodeableConcept only,
never the Medication a medicationReference points to; searches are paged at 20 with next
links. It serves HTTP/1.1 keep-alive, as FHIR servers do (werkzeug's development server
closes every connection, so it would never exercise the service's connection reuse), and
closes a connection idle for `idle_timeout` seconds; `accepted` counts the connections
it accepted. It requires a bearer token and records every request. `fault` lets a test
make it slow, fail or misbehave. A search asking `_include=<type>:medication` (as the
service's medication templates do) is answered with the Medications its records reference
as include entries (search.mode include); `include_medications` does so for every search,
as some EHRs do unasked; `ignore_include` leaves `_include` out (a server that does not
support it, with FHIR's lenient handling of parameters), and `refuse_include` answers 400
to it (one that refuses what it does not support).

The search logic is written independently of the service's own filters on purpose:
both must agree for the scenario tests to pass.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Request, Response

from cds_service.data import ByteBudget
from cds_service.data import Response as DataResponse
from cds_service.errors import FetchError

from .ports import free_port

# (resourceType, search parameter) -> element names holding the value (choice forms listed)
DATE_ELEMENTS = {
    ("Observation", "date"): ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
    ("MedicationRequest", "authoredon"): ("authoredOn",),
    ("MedicationAdministration", "effective-time"): ("effectiveDateTime", "effectivePeriod"),
    ("MedicationStatement", "effective"): ("effectiveDateTime", "effectivePeriod"),
    ("Procedure", "date"): ("performedDateTime", "performedPeriod"),
    ("Condition", "onset-date"): ("onsetDateTime", "onsetPeriod"),
    ("Condition", "recorded-date"): ("recordedDate",),
    ("ServiceRequest", "authored"): ("authoredOn",),
    ("Immunization", "date"): ("occurrenceDateTime",),
    ("Encounter", "date"): ("period",),
    ("AllergyIntolerance", "date"): ("recordedDate",),
}
CODE_ELEMENTS = {
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationAdministration": "medicationCodeableConcept",
    "MedicationStatement": "medicationCodeableConcept",
    "Immunization": "vaccineCode",
}
# the record types whose `medication` reference `_include=<type>:medication` follows (written
# here, not taken from the service, like the search logic)
MEDICATION_KINDS = ("MedicationRequest", "MedicationAdministration", "MedicationStatement", "MedicationDispense")
TOKEN_ELEMENTS = {"status": "status", "category": "category", "clinical-status": "clinicalStatus",
                  "verification-status": "verificationStatus", "vaccine-code": "vaccineCode", "class": "class",
                  "intent": "intent"}


@dataclass
class Recorded:
    path: str
    query: str
    authorization: str | None


@dataclass
class FhirStore:
    resources: list[dict] = field(default_factory=list)
    # Resources by type, by (type, the last segment of the patient reference) and by (type,
    # id), in their order: rebuilt when `resources` is replaced or grows (the loader's server
    # in test_deploy.py holds every scenario patient: thousands of resources). A search
    # still applies every parameter to the candidates: the index only narrows them.
    _index: tuple | None = field(default=None, repr=False, compare=False)

    def _indexed(self) -> tuple[dict[str, list[dict]], dict[tuple[str, str], list[dict]] | None,
                                dict[tuple[str, str], dict]]:
        resources = self.resources
        if self._index is None or self._index[:2] != (id(resources), len(resources)):
            by_type: dict[str, list[dict]] = {}
            by_patient: dict[tuple[str, str], list[dict]] | None = {}
            by_id: dict[tuple[str, str], dict] = {}
            for r in resources:
                kind, rid = r.get("resourceType"), r.get("id")
                if not isinstance(kind, str):
                    continue  # never the type of a read or a search
                by_type.setdefault(kind, []).append(r)
                if isinstance(rid, str):
                    by_id.setdefault((kind, rid), r)  # the first, as a scan finds it
                if by_patient is not None:
                    try:
                        ref = _patient_reference(r)
                    except AttributeError:  # not a Reference: every search by patient scans (and fails) as before
                        ref = None
                    if isinstance(ref, str):
                        by_patient.setdefault((kind, ref.rsplit("/", 1)[-1]), []).append(r)
                    else:
                        by_patient = None
            self._index = (id(resources), len(resources), by_type, by_patient, by_id)
        return self._index[2], self._index[3], self._index[4]

    def read(self, kind: str, rid: str) -> dict | None:
        return self._indexed()[2].get((kind, rid))

    def search(self, kind: str, params: list[tuple[str, str]]) -> list[dict]:
        """Resources of `kind` matching every parameter; raises ValueError for unknown ones."""
        by_type, by_patient, _ = self._indexed()
        patient = next((value for name, value in params if name in ("patient", "subject")), None)
        # a reference to the patient ends with its id: the candidates are those whose reference does
        if patient is None or by_patient is None:
            result = by_type.get(kind, [])
        else:
            result = by_patient.get((kind, patient.rsplit("/", 1)[-1]), [])
        for name, value in params:
            if name in ("_count", "_sort", "_offset"):
                continue
            if name == "_include":
                if value != f"{kind}:medication" or kind not in MEDICATION_KINDS:
                    raise ValueError(f"unsupported _include '{value}' for {kind}")
                continue
            result = [r for r in result if _matches(kind, r, name, value)]
        return list(result)

    def referenced_medications(self, records: list[dict]) -> list[dict]:
        """The Medications `records` reference (Medication/<id>) that the chart holds, each once."""
        found: dict[str, dict] = {}
        for record in records:
            ref = (record.get("medicationReference") or {}).get("reference", "")
            if ref.startswith("Medication/") and ref not in found:
                medication = self.read("Medication", ref.split("/", 1)[1])
                if medication is not None:
                    found[ref] = medication
        return list(found.values())


def asks_include(params: list[tuple[str, str]]) -> bool:
    return any(name == "_include" for name, _ in params)


def without_include(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The parameters as a server that ignores `_include` reads them."""
    return [(name, value) for name, value in params if name != "_include"]


def _patient_reference(resource: dict) -> str:
    return (resource.get("subject") or resource.get("patient") or {}).get("reference", "")


def _matches(kind: str, resource: dict, name: str, value: str) -> bool:
    if name in ("patient", "subject"):
        ref = _patient_reference(resource)
        return ref in (value, f"Patient/{value}") or ref.endswith(f"/Patient/{value}")
    if name == "_id":
        return resource.get("id") in value.split(",")
    if name == "code":
        return _token_matches(resource.get(CODE_ELEMENTS.get(kind, "code")), value)
    if name in TOKEN_ELEMENTS:
        return _token_matches(resource.get(TOKEN_ELEMENTS[name]), value)
    if (kind, name) in DATE_ELEMENTS:
        return _date_matches(resource, DATE_ELEMENTS[(kind, name)], value)
    raise ValueError(f"unsupported search parameter '{name}' for {kind}")


def _token_matches(element, value: str) -> bool:
    """FHIR token search: any of the comma-separated [system|]code tokens matches."""
    if isinstance(element, str):
        pairs = {(None, element)}
    elif isinstance(element, dict):
        pairs = {(c.get("system"), c.get("code")) for c in element.get("coding", [])}
        if element.get("code"):
            pairs.add((element.get("system"), element["code"]))
    else:
        pairs = set()
    for token in value.split(","):
        system, bar, code = token.rpartition("|")
        if (bar and (system or None, code) in pairs) or (not bar and any(c == code for _, c in pairs)):
            return True
    return False


def _date_matches(resource: dict, elements: tuple[str, ...], value: str) -> bool:
    prefix, date = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", value)
    for element in elements:
        found = resource.get(element)
        if isinstance(found, dict):
            found = found.get("start") or found.get("end")
        if isinstance(found, str):
            day = found[:10]
            target = date[:10]
            return {"ge": day >= target, "gt": day > target, "le": day <= target,
                    "lt": day < target, "eq": day == target}[prefix]
    return False


class FhirServer:
    """Run a FhirStore over HTTP on 127.0.0.1 in a background thread."""

    def __init__(self, store: FhirStore | None = None, token: str | None = "test-token", page_size: int = 20,
                 idle_timeout: float = 3.0):
        self.store = store or FhirStore()
        self.token = token
        self.page_size = page_size
        self.requests: list[Recorded] = []
        self.fault: Callable[[Request], Response | None] | None = None
        self.delay: float = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.include_medications = False
        self.refuse_include = False  # a server that supports no _include (and refuses what it does not support)
        self.ignore_include = False  # a server that supports no _include and ignores it (FHIR's lenient handling)
        self._lock = threading.Lock()
        self._server = _KeepAliveServer(self._wsgi, idle_timeout)
        self.base = f"http://127.0.0.1:{self._server.server_port}/fhir"
        # A short poll interval: shutdown() waits for it, once per test that starts a server.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def accepted(self) -> int:
        """Connections accepted so far (each serves one or more requests)."""
        return self._server.accepted

    def __enter__(self) -> FhirServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()

    def fail_on(self, path: str, query_fragment: str, response: Response) -> None:
        """Answer `response` to requests for `path` whose query holds `query_fragment`."""
        self.fault = lambda req: (response if req.path == path and query_fragment in req.query_string.decode()
                                  else None)

    def reset(self, resources: list[dict] | None = None) -> None:
        with self._lock:
            self.store.resources = list(resources or [])
            self.requests.clear()
            self.fault = None
            self.delay = 0.0
            self.max_in_flight = 0
            self.include_medications = False
            self.refuse_include = False
            self.ignore_include = False

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = self._handle(request)
        finally:
            with self._lock:
                self.in_flight -= 1
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(Recorded(request.path, request.query_string.decode(), request.headers.get("Authorization")))
        if self.delay:
            time.sleep(self.delay)
        if self.fault is not None:
            faulted = self.fault(request)
            if faulted is not None:
                return faulted
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _outcome(401, "login", "missing or wrong bearer token")
        parts = [p for p in request.path.split("/") if p][1:]  # drop "fhir"
        if len(parts) == 2:
            found = self.store.read(*parts)
            return _json(found) if found else _outcome(404, "not-found", f"{parts[0]}/{parts[1]} not found")
        if len(parts) == 1:
            params = parse_qsl(request.query_string.decode(), keep_blank_values=True)
            if self.refuse_include and asks_include(params):
                return _outcome(400, "not-supported", "_include is not supported")
            if self.ignore_include:
                params = without_include(params)
            try:
                matches = self.store.search(parts[0], params)
            except ValueError as exc:
                return _outcome(400, "not-supported", str(exc))
            return _json(self._page(parts[0], matches, request))
        return _outcome(404, "not-found", "unknown path")

    def _page(self, kind: str, matches: list[dict], request: Request) -> dict:
        offset = int(request.args.get("_offset", "0"))
        page = matches[offset: offset + self.page_size]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                  "entry": [{"resource": r, "search": {"mode": "match"}} for r in page]}
        asked = asks_include(parse_qsl(request.query_string.decode())) and not self.ignore_include
        if self.include_medications or asked:
            for medication in self.store.referenced_medications(page):
                bundle["entry"].append({"resource": medication, "search": {"mode": "include"}})
        if offset + self.page_size < len(matches):
            query = [(k, v) for k, v in parse_qsl(request.query_string.decode(), keep_blank_values=True) if k != "_offset"]
            query.append(("_offset", str(offset + self.page_size)))
            from urllib.parse import urlencode

            bundle["link"] = [{"relation": "next", "url": f"{self.base}/{kind}?{urlencode(query)}"}]
        return bundle


def _call(app: Callable, url: str, headers, data: bytes = b"") -> tuple[str, Headers, bytes]:
    """A GET of `url` answered by the WSGI app in this thread: (status line, headers, body)."""
    split = urlsplit(url)
    environ = EnvironBuilder(path=split.path, query_string=split.query, headers=headers, data=data,
                             base_url=f"{split.scheme}://{split.netloc}").get_environ()
    parts, status, answer_headers = run_wsgi_app(app, environ, buffered=True)
    return status, answer_headers, b"".join(parts)


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """One connection: requests in sequence (HTTP/1.1 keep-alive), each answered by the WSGI
    app with a Content-Length, until the client closes or sends nothing for `timeout`
    seconds (socketserver sets it on the socket; http.server then closes)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no delayed-ACK stall
    server: _KeepAliveServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # the server records requests itself; no access log among the test output

    def do_GET(self) -> None:  # noqa: N802 (http.server's name); other methods: 501, as the service only reads
        length = int(self.headers.get("Content-Length") or 0)
        host, port = self.server.server_address[:2]
        status, headers, body = _call(self.server.app, f"http://{host}:{port}{self.path}", list(self.headers.items()),
                                      self.rfile.read(length))
        self.send_response(int(status.split()[0]), status.partition(" ")[2])
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _KeepAliveServer(ThreadingHTTPServer):
    daemon_threads = True  # a connection left open by a client does not hold the test run
    request_queue_size = 128  # a call opens dozens of connections at once

    def __init__(self, app: Callable, idle_timeout: float) -> None:
        self.app = app
        self.accepted = 0
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        handler = type("IdleClosingHandler", (_KeepAliveHandler,), {"timeout": idle_timeout})
        super().__init__(("127.0.0.1", 0), handler)

    def process_request(self, request, client_address) -> None:
        self.accepted += 1  # the accept loop is one thread: no lock needed
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End the connections still open, as a stopped server does: their threads read the
        end of the stream and finish now, not at their idle timeout, inside a later test."""
        with self._open_lock:
            still_open = list(self._open)
        for connection in still_open:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (the service's deadline, a test's fault) is routine here;
        # anything else is printed, as socketserver does.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class InProcess:
    """A fetch transport for the service (cds_service.data.Transport) that hands each GET for
    `server` to its WSGI app in the calling thread: the same answers (token check, paging,
    400s, `_include` entries, the request log), without a socket. For tests that prove what
    the service makes of the data of many patients; fetching over HTTP is proven by the
    scenario suite's fetch mode and tests/test_fetch*.py. A URL off the server is a
    connection error, as nothing listens there; faults that sleep are not cut at the deadline."""

    def __init__(self, server: FhirServer) -> None:
        self.server = server
        self.origin = urlsplit(server.base)[:2]

    def get(self, url: str, headers: dict[str, str], timeout: float, budget: ByteBudget | None = None) -> DataResponse:
        split = urlsplit(url)
        if split[:2] != self.origin:
            raise FetchError("connection failed: ConnectionError", kind="connection")
        status, _, body = _call(self.server._wsgi, url, headers)
        if budget is not None:
            budget.spend(len(body))
        return DataResponse(int(status.split()[0]), body)


def bundle(resources: list[dict], next_url: str | None = None, extra_entries: list[dict] | None = None) -> Response:
    """A searchset Bundle answer, optionally with a next link and raw extra entries."""
    body: dict = {"resourceType": "Bundle", "type": "searchset",
                  "entry": [{"resource": r} for r in resources] + (extra_entries or [])}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return _json(body)


def operation_outcome(status: int = 200) -> Response:
    return _outcome(status, "processing", "the server could not run the search")


def refused_base() -> str:
    """A loopback FHIR base on a port nothing listens on (bound, then closed)."""
    return f"http://127.0.0.1:{free_port()}/fhir"


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/fhir+json")


def _outcome(status: int, code: str, text: str) -> Response:
    return _json({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}, status)


def run_query(store: FhirStore, relative: str, include: bool = True) -> dict | None:
    """What an EHR would put in a prefetch key for this (already resolved) query; without
    `include`, as one that ignores `_include`."""
    split = urlsplit(relative)
    parts = [p for p in split.path.split("/") if p]
    if len(parts) == 2:
        return store.read(*parts)
    params = parse_qsl(split.query, keep_blank_values=True)
    if not include:
        params = without_include(params)
    matches = store.search(parts[0], params)
    entries = [{"resource": r, "search": {"mode": "match"}} for r in matches]
    if asks_include(params):
        entries += [{"resource": m, "search": {"mode": "include"}} for m in store.referenced_medications(matches)]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "entry": entries}
