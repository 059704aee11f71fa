"""HTTP GETs to the CDS client's fhirServer (and a key set's URL), behind `Transport`.

Two ways out, one behaviour:

* direct (no proxy named for the origin): the standard library's http.client, one
  keep-alive connection per origin per thread (a thread sends one request at a time; at
  most 10 origins a thread), TLS verified against the CA bundle requests would use.
* through a proxy the environment names (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY):
  urllib3's ProxyManager, which does absolute-form forwarding, CONNECT tunnels and proxy
  credentials in the proxy URL.

Why http.client for the direct way: a fetch-path call sends about 50 GETs, and with 42
in flight a GET through urllib3's PoolManager cost about twice the CPU of the same GET on
http.client (bench/README.md, "The transport"); a fetch-path call went from 42-50 ms of
CPU to 27-29. What urllib3 added per GET (URL parsing and re-encoding, pool keys, a
queue per pool, a response wrapper) did nothing this service needs.

Deadlines: a GET ends at its deadline, connect, headers and every body byte included.
A socket timeout bounds one read only, so a server trickling a byte at a time could hold
a thread far longer; a watchdog thread (`_Reaper`) shuts the connection's socket down at
the deadline, which wakes the blocked read at once.

Failures (mapped at this boundary to FetchError, kind as in errors.FETCH_KINDS): a
connection refused, reset or closed before the answer is complete (typically a kept-alive
connection the server closed while idle) is retried once on a fresh connection if the
deadline allows, then is kind "connection"; the deadline is "timeout"; a certificate not
trusted is "request", never retried, and nothing (no token) was sent.
"""

from __future__ import annotations

import functools
import heapq
import http.client
import itertools
import os
import re
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, quote, urlsplit

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


def _put_under_deadline(connection: Any) -> None:
    deadline = getattr(_watch, "deadline", None)
    if deadline is not None:
        _watch.tickets.append(_REAPER.watch(deadline, connection))


# -- through a proxy: urllib3 ------------------------------------------------------------------------

class _Watched:
    """A urllib3 connection put under the sending thread's deadline before each request."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _put_under_deadline(self)
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


@functools.lru_cache(maxsize=8)
def _tls_context(ca_certs: str | None = None, ca_cert_dir: str | None = None) -> ssl.SSLContext:
    """Certificates and host names verified (TLS 1.2 at least), against that bundle; one
    context per bundle, shared by every direct connection."""
    context = ssl.create_default_context(cafile=ca_certs, capath=ca_cert_dir)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@functools.lru_cache(maxsize=256)
def _proxy_for(origin: str) -> str | None:
    """The proxy the environment names for this origin (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
    NO_PROXY, as requests reads them), looked up once per origin rather than per GET."""
    return requests.utils.select_proxy(origin, requests.utils.get_environ_proxies(origin))


def _proxy_manager(proxy: str) -> urllib3.ProxyManager:
    """One thread's way through one proxy: at most 10 hosts, one keep-alive connection each, watched."""
    options: dict[str, Any] = {"num_pools": 10, "maxsize": 1, "block": False, "retries": False,
                               "cert_reqs": "CERT_REQUIRED", **_ca_bundle()}
    manager = urllib3.ProxyManager(proxy, **options)
    manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return manager


# -- direct: http.client ------------------------------------------------------------------------------

# What RFC 3986 allows unescaped in a path and query, and `%`: anything else is
# percent-encoded (UTF-8) before it goes on the request line, as urllib3 did (a FHIR token
# search's `|`: some servers, Tomcat's among them, refuse it raw).
_NOT_IN_TARGET = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def sent_length(text: str) -> int:
    """How long `text` is on the request line: what _target percent-encodes counted as sent
    (a token search's `|` is three characters there)."""
    return len(text) + sum(3 * len(c.encode()) - 1 for c in _NOT_IN_TARGET.findall(text))


def _target(parts: SplitResult) -> str:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if _BAD_PERCENT.search(target):
        target = target.replace("%", "%25")  # a lone `%` is a literal one
    return _NOT_IN_TARGET.sub(lambda m: quote(m.group(), safe=""), target)


def _decoder(encoding: str | None) -> Any:
    """A zlib decoder for the answer's Content-Encoding (we ask for gzip or deflate), or None."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    return None  # identity; anything else is passed through, and fails as JSON


class _Deflate:
    """`deflate` as servers send it: zlib-wrapped, or (wrongly, but commonly) raw."""

    def __init__(self) -> None:
        self._zlib: Any = zlib.decompressobj()
        self._first = True

    @property
    def unconsumed_tail(self) -> bytes:
        return bytes(self._zlib.unconsumed_tail)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if not self._first:
            return bytes(self._zlib.decompress(data, max_length))
        self._first = False
        try:
            return bytes(self._zlib.decompress(data, max_length))
        except zlib.error:
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return bytes(self._zlib.decompress(data, max_length))

    def flush(self) -> bytes:
        return bytes(self._zlib.flush())


_CHUNK = 65536


def _read_body(response: http.client.HTTPResponse, budget: ByteBudget | None) -> bytes:
    """The whole body, decoded, each piece counted against the budget as it comes (a
    compressed answer is inflated at most 64 KiB at a time, so it cannot outgrow it)."""
    decoder = _decoder(response.getheader("Content-Encoding"))
    chunks: list[bytes] = []

    def keep(piece: bytes) -> None:
        if piece:
            if budget is not None:
                budget.spend(len(piece))
            chunks.append(piece)

    while chunk := response.read(_CHUNK):
        if decoder is None:
            keep(chunk)
            continue
        keep(decoder.decompress(chunk, _CHUNK))
        while decoder.unconsumed_tail:
            keep(decoder.decompress(decoder.unconsumed_tail, _CHUNK))
    if response.length:  # the server closed (or the deadline cut) before Content-Length
        raise http.client.IncompleteRead(b"", response.length)
    if decoder is not None:
        keep(decoder.flush())
    return b"".join(chunks)


class _Direct:
    """One thread's direct connections: one per origin, the 10 last used kept alive."""

    LIMIT = 10

    def __init__(self) -> None:
        self.connections: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}

    def connection(self, parts: SplitResult, timeout: float) -> http.client.HTTPConnection:
        origin = (parts.scheme, parts.hostname or "", parts.port)
        connection = self.connections.pop(origin, None)
        if connection is None:
            if len(self.connections) >= self.LIMIT:
                self.connections.pop(next(iter(self.connections))).close()
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(origin[1], origin[2], timeout=timeout,
                                                         context=_tls_context(**_ca_bundle()))
            else:
                connection = http.client.HTTPConnection(origin[1], origin[2], timeout=timeout)
        self.connections[origin] = connection  # last used last
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def get(self, parts: SplitResult, headers: dict[str, str], deadline: float,
            budget: ByteBudget | None) -> Response:
        connection = self.connection(parts, max(0.001, deadline - time.monotonic()))
        _put_under_deadline(connection)
        try:
            connection.request("GET", _target(parts), headers=headers)
            response = connection.getresponse()
            body = _read_body(response, budget)
            if time.monotonic() >= deadline:
                raise TimeoutError("deadline")  # the watchdog closed the connection: what was read is cut short
        except BaseException:
            self.forget(connection)  # it may be cut, or mid-answer: never reused
            raise
        if response.will_close:
            self.forget(connection)
        return Response(response.status, body)

    def forget(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        for origin, held in list(self.connections.items()):
            if held is connection:
                del self.connections[origin]

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()


# -- the transport -----------------------------------------------------------------------------------

# requests' defaults that a FHIR server may rely on (compressed answers, decoded here).
_DEFAULT_HEADERS = {"User-Agent": "mm-cds", "Accept-Encoding": "gzip, deflate"}

# A connection refused, reset or closed before a whole answer, or a host name the resolver
# did not answer for (urllib3 counted that a connection failure too): worth one retry on
# a fresh one. (NewConnectionError subclasses ConnectTimeoutError in urllib3 2: tested first.)
_RETRIED = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError, ConnectionError,
            socket.gaierror, http.client.IncompleteRead, http.client.BadStatusLine)
_TIMEOUTS = (urllib3.exceptions.TimeoutError, TimeoutError)
_FAILURES = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError)


def _fetch_error(exc: BaseException, timeout: float, deadline: float) -> FetchError:
    if time.monotonic() >= deadline or isinstance(exc, _TIMEOUTS) and not isinstance(exc, _RETRIED):
        return FetchError(f"timed out after {timeout:.1f}s", kind="timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FetchError(f"the TLS certificate is not trusted: {exc.verify_message}")
    if isinstance(exc, _RETRIED):
        return FetchError(f"connection failed: {type(exc).__name__}", kind="connection")
    return FetchError(f"request failed: {type(exc).__name__}")


class HttpTransport:
    """HTTP GETs, direct or through the environment's proxy (see the module's docstring).
    `max_bytes` caps each answer on its own (for callers without a budget, e.g. a key set
    download). `timeout` is the whole GET: connect, headers and body end by then."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._local = threading.local()
        self.max_bytes = max_bytes

    def get(self, url: str, headers: dict[str, str], timeout: float,
            budget: ByteBudget | None = None) -> Response:
        deadline = time.monotonic() + timeout
        if budget is None and self.max_bytes is not None:
            budget = ByteBudget(self.max_bytes, "this answer alone")
        headers = {**_DEFAULT_HEADERS, **headers}
        _watch.deadline, _watch.tickets = deadline, []
        try:
            try:
                return self._get(url, headers, deadline, budget)
            except _RETRIED:
                # Most often a keep-alive connection the server closed while idle: an
                # idempotent GET is sent once more, on a fresh connection, in the time left.
                self._drop_connections()
                if time.monotonic() >= deadline:
                    raise
                return self._get(url, headers, deadline, budget)
        except FetchError:
            self._drop_connections()
            raise
        except _FAILURES as exc:
            self._drop_connections()
            raise _fetch_error(exc, timeout, deadline) from None
        finally:
            for ticket in _watch.tickets:
                _REAPER.release(ticket)
            _watch.deadline, _watch.tickets = None, []

    def _get(self, url: str, headers: dict[str, str], deadline: float, budget: ByteBudget | None) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        proxy = _proxy_for(f"{parts.scheme}://{parts.netloc}")
        if proxy:
            return self._proxied(proxy, url, headers, deadline, budget)
        direct: _Direct | None = getattr(self._local, "direct", None)
        if direct is None:
            direct = self._local.direct = _Direct()
        return direct.get(parts, headers, deadline, budget)

    def _proxied(self, proxy: str, url: str, headers: dict[str, str], deadline: float,
                 budget: ByteBudget | None) -> Response:
        managers: dict[str, urllib3.ProxyManager] = getattr(self._local, "proxies", None) or {}
        self._local.proxies = managers
        manager = managers.get(proxy) or managers.setdefault(proxy, _proxy_manager(proxy))
        remaining = max(0.001, deadline - time.monotonic())
        response = manager.request(
            "GET", url, headers=headers, preload_content=False, redirect=False,
            retries=False, timeout=urllib3.Timeout(connect=remaining, read=remaining))
        try:
            chunks = []
            for chunk in response.stream(_CHUNK, decode_content=True):
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

    def _drop_connections(self) -> None:
        direct: _Direct | None = getattr(self._local, "direct", None)
        if direct is not None:
            direct.close()
        for manager in (getattr(self._local, "proxies", None) or {}).values():
            manager.clear()
        self._local.proxies = None


RequestsTransport = HttpTransport  # its former name (it used requests)
