"""FHIR reads and searches against the CDS client's fhirServer.

The network sits behind `Transport`, so tests and benchmarks can inject one (a loopback
server is used by the scenario tests; a fake transport by unit tests). Bundles are paged
through `link[next]`, only on the same server, so the bearer token never leaves it: that
holds for a next link found in a prefetched Bundle too. One call reads at most
`fetch_max_bytes` from the server, all keys and pages together (`ByteBudget`), so a
huge answer costs a 412, not the worker's memory.

Deadlines: the whole fetch of a call (connect, headers, body bytes, every page) ends at
the call's deadline. requests' timeout is per socket read, so a server trickling one byte
at a time would hold a thread far longer; a watchdog thread (`_Reaper`) shuts the
connection's socket down at the deadline, which wakes the blocked read at once.

Connections: urllib3 pools per fetch thread (at most 10 hosts a thread, one keep-alive
connection a host, since a thread sends one request at a time). A GET that
fails with a connection error (typically a pooled connection the server had closed while
it was idle) is retried once on a fresh connection, if the deadline allows.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson
import requests.utils
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from cds_service.errors import FetchError


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class ByteBudget:
    """Bytes one call may still read, shared by its fetch threads (checked per chunk)."""

    def __init__(self, limit: int, what: str = "fetch_max_bytes"):
        self.limit = limit
        self.what = what  # named in the refusal
        self.used = 0
        self._lock = threading.Lock()

    def spend(self, size: int) -> None:
        with self._lock:
            self.used += size
            if self.used > self.limit:
                raise FetchError(f"the answers exceed {self.limit} bytes ({self.what})", kind="too_large")


class Transport(Protocol):
    def get(self, url: str, headers: dict[str, str], timeout: float,
            budget: ByteBudget | None = None) -> Response: ...


class _Reaper:
    """One watchdog thread: at each watched deadline, shut the connection's socket down.

    A blocked recv() then returns at once (end of stream), so the fetch thread stops
    reading and is free; the connection is dead and never reused."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, connection: Any) -> int:
        with self._wake:
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="mm-cds-fetch-reaper", daemon=True)
                self._thread.start()
            ticket = next(self._ids)
            heapq.heappush(self._heap, (deadline, ticket, connection))
            self._live.add(ticket)
            if self._heap[0][1] == ticket:
                # the earliest deadline now: the thread must wake sooner. Otherwise it is
                # already waiting for an earlier one (a call's GETs share one deadline).
                self._wake.notify()
            return ticket

    def release(self, ticket: int) -> None:
        with self._wake:
            self._live.discard(ticket)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # released: nothing to do
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, ticket, connection = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(ticket)
            sock = getattr(connection, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed


_REAPER = _Reaper()
_watch = threading.local()  # .deadline and .tickets of the GET this thread is sending


class _Watched:
    """A urllib3 connection put under the sending thread's deadline before each request."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_watch, "deadline", None)
        if deadline is not None:
            _watch.tickets.append(_REAPER.watch(deadline, self))
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _ca_bundle() -> dict[str, str]:
    """Where the CA certificates are, as requests finds them: REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE (a file or a directory), else the certifi bundle requests ships with."""
    path = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if path:
        return {"ca_cert_dir": path} if os.path.isdir(path) else {"ca_certs": path}
    return {"ca_certs": requests.utils.extract_zipped_paths(requests.utils.DEFAULT_CA_BUNDLE_PATH)}


@functools.lru_cache(maxsize=256)
def _proxy_for(origin: str) -> str | None:
    """The proxy the environment names for this origin (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
    NO_PROXY, as requests reads them), looked up once per origin rather than per GET."""
    return requests.utils.select_proxy(origin, requests.utils.get_environ_proxies(origin))


def _pools(proxy: str | None) -> urllib3.PoolManager:
    """One thread's pools: at most 10 hosts, one keep-alive connection each, watched."""
    options: dict[str, Any] = {"num_pools": 10, "maxsize": 1, "block": False, "retries": False,
                               "cert_reqs": "CERT_REQUIRED", **_ca_bundle()}
    manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
    manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return manager


# requests' defaults that a FHIR server may rely on (compressed answers); urllib3 decodes them.
_DEFAULT_HEADERS = {"User-Agent": "mm-cds", "Accept-Encoding": "gzip, deflate"}


class HttpTransport:
    """HTTP GETs through urllib3, one keep-alive pool manager per thread (and per proxy the
    environment names). `max_bytes` caps each answer on its own (for callers without a
    budget, e.g. a key set download).

    `timeout` is the whole GET: connect, headers and body end by then (see _Reaper).
    urllib3 directly rather than requests: a GET costs about half the CPU (no per-request
    environment, netrc and hook processing), which matters when a call sends 50 of them.
    What requests took from the environment is kept: proxies, the CA bundle variables."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._local = threading.local()
        self.max_bytes = max_bytes

    def _manager(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        proxy = _proxy_for(f"{parts.scheme}://{parts.netloc}")
        managers: dict[str | None, urllib3.PoolManager] | None = getattr(self._local, "managers", None)
        if managers is None:
            managers = self._local.managers = {}
        manager = managers.get(proxy)
        if manager is None:
            manager = managers[proxy] = _pools(proxy)
        return manager

    def _drop_connections(self) -> None:
        managers = getattr(self._local, "managers", None) or {}
        self._local.managers = None
        for manager in managers.values():
            manager.clear()

    def get(self, url: str, headers: dict[str, str], timeout: float,
            budget: ByteBudget | None = None) -> Response:
        deadline = time.monotonic() + timeout
        if budget is None and self.max_bytes is not None:
            budget = ByteBudget(self.max_bytes, "this answer alone")
        _watch.deadline, _watch.tickets = deadline, []
        try:
            try:
                return self._get(url, headers, deadline, budget)
            except _CONNECTION_ERRORS:
                # Most often a keep-alive connection the server closed while idle: an
                # idempotent GET is sent once more, on a fresh connection, in the time left.
                self._drop_connections()
                if time.monotonic() >= deadline:
                    raise
                return self._get(url, headers, deadline, budget)
        except urllib3.exceptions.HTTPError as exc:
            self._drop_connections()
            if isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(exc, _CONNECTION_ERRORS) \
                    or time.monotonic() >= deadline:
                raise FetchError(f"timed out after {timeout:.1f}s", kind="timeout") from None
            if isinstance(exc, _CONNECTION_ERRORS):
                raise FetchError(f"connection failed: {type(exc).__name__}", kind="connection") from None
            raise FetchError(f"request failed: {type(exc).__name__}") from None
        except (OSError, ValueError) as exc:  # a socket error urllib3 did not wrap; a URL it cannot send
            self._drop_connections()
            if time.monotonic() >= deadline:
                raise FetchError(f"timed out after {timeout:.1f}s", kind="timeout") from None
            raise FetchError(f"request failed: {type(exc).__name__}") from None
        except FetchError:
            self._drop_connections()
            raise
        finally:
            for ticket in _watch.tickets:
                _REAPER.release(ticket)
            _watch.deadline, _watch.tickets = None, []

    def _get(self, url: str, headers: dict[str, str], deadline: float, budget: ByteBudget | None) -> Response:
        remaining = max(0.001, deadline - time.monotonic())
        response = self._manager(url).request(
            "GET", url, headers={**_DEFAULT_HEADERS, **headers}, preload_content=False, redirect=False,
            retries=False, timeout=urllib3.Timeout(connect=remaining, read=remaining))
        try:
            chunks = []
            for chunk in response.stream(65536, decode_content=True):
                if budget is not None:
                    budget.spend(len(chunk))
                chunks.append(chunk)
            if time.monotonic() >= deadline:
                # the watchdog closed the connection: what was read is cut short
                raise urllib3.exceptions.ReadTimeoutError(None, url, "deadline")  # type: ignore[arg-type]
            return Response(response.status, b"".join(chunks))
        except BaseException:
            response.close()  # never back into the pool: it may be cut, or mid-answer
            raise
        finally:
            response.release_conn()


# A connection refused, reset or closed before an answer: worth one retry on a fresh one.
# (NewConnectionError subclasses ConnectTimeoutError in urllib3 2: tested first.)
_CONNECTION_ERRORS = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError)

RequestsTransport = HttpTransport  # its former name (it used requests)


class FhirClient:
    def __init__(self, base: str, token: str | None, transport: Transport, timeout: float, max_pages: int = 20,
                 max_bytes: int = 16 * 1024 * 1024):
        self.base = base.rstrip("/")
        self.transport = transport
        self.timeout = timeout
        self.max_pages = max_pages
        self.budget = ByteBudget(max_bytes)
        self.headers = {"Accept": "application/fhir+json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def query(self, relative: str, deadline: float | None = None) -> list[dict]:
        """Resources answering a read or search (relative to the base), all pages."""
        return self.follow(f"{self.base}/{relative.lstrip('/')}", deadline, read=_is_read(relative))

    def follow(self, url: str, deadline: float | None = None, read: bool = False) -> list[dict]:
        deadline = deadline or time.monotonic() + self.timeout
        resources: list[dict] = []
        for _ in range(self.max_pages):
            if not self.on_server(url):
                # The bearer token is for fhirServer only: never sent elsewhere.
                raise FetchError("a next link points outside fhirServer; not followed", kind="other_server")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"timed out after {self.timeout:.1f}s", kind="timeout")
            response = self.transport.get(url, self.headers, remaining, self.budget)
            if response.status == 404 and read:
                return []
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}", kind="http_status")
            body = _json(response.body)
            kind = body.get("resourceType")
            if kind == "OperationOutcome":
                raise FetchError("the server answered with an OperationOutcome", kind="operation_outcome")
            if kind != "Bundle":
                return [body]
            resources.extend(bundle_resources(body))
            following = next_link(body)
            if following is None:
                return resources
            url = following
        raise FetchError(f"more than {self.max_pages} pages", kind="too_many_pages")

    def on_server(self, url: str) -> bool:
        """Same scheme, host and port as fhirServer, and a path under its base path, both
        normalised (case of scheme and host, default ports); a URL with userinfo or a `.`
        or `..` segment (percent-encoded or not) is never on the server."""
        return same_server(self.base, url)


def same_server(base_url: str, url: str) -> bool:
    """Whether `url` is under the FHIR base `base_url` (see FhirClient.on_server)."""
    base, target = _normalised(base_url), _normalised(url)
    if base is None or target is None or base[:3] != target[:3]:
        return False
    root = base[3].rstrip("/")
    return target[3] == root or target[3].startswith(root + "/")


def bundle_resources(bundle: dict) -> list[dict]:
    """Entry resources of a Bundle, leaving out OperationOutcome entries (search warnings)
    and entries that are not resources at all (no resourceType string)."""
    out: list[dict] = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if isinstance(kind, str) and kind and kind != "OperationOutcome":
            out.append(resource)
    return out


def next_link(bundle: dict) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"] or None
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalised(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of an http(s) URL, or None when it must not be trusted."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # e.g. an unclosed IPv6 bracket, a port that is not a number
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None  # userinfo refused: "https://fhir.example@elsewhere/" is elsewhere
    path = parts.path or "/"
    seen = path
    for _ in range(3):  # "%252e%252e" is ".." to a server that decodes twice
        if "\\" in seen or any(segment in (".", "..") for segment in seen.split("/")):
            return None
        decoded = unquote(seen)
        if decoded == seen:
            break
        seen = decoded
    else:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme], path


def _json(body: bytes) -> dict:
    try:
        value = orjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError("the answer is not JSON", kind="not_json") from None
    if not isinstance(value, dict):
        raise FetchError("the answer is not a FHIR resource", kind="not_json")
    return value


def _is_read(relative: str) -> bool:
    return "?" not in relative and relative.strip("/").count("/") == 1
