"""FHIR reads and searches against the CDS client's fhirServer.

The network sits behind `Transport`, so tests and benchmarks can inject one (a loopback
server is used by the scenario tests; a fake transport by unit tests). Bundles are paged
through `link[next]`, only on the same server, so the bearer token never leaves it: that
holds for a next link found in a prefetched Bundle too. One call reads at most
`fetch_max_bytes` from the server, all keys and pages together (`ByteBudget`), so a
huge answer costs a 412, not the worker's memory.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import requests

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


class RequestsTransport:
    """HTTP through requests, one keep-alive session per thread. `max_bytes` caps each
    answer on its own (for callers without a budget, e.g. a key set download)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._local = threading.local()
        self.max_bytes = max_bytes

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def get(self, url: str, headers: dict[str, str], timeout: float,
            budget: ByteBudget | None = None) -> Response:
        deadline = time.monotonic() + timeout
        if budget is None and self.max_bytes is not None:
            budget = ByteBudget(self.max_bytes, "this answer alone")
        try:
            with self._session().get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False) as r:
                chunks = []
                for chunk in r.iter_content(65536):
                    if budget is not None:
                        budget.spend(len(chunk))
                    # requests' timeout is per socket read: a server trickling bytes is
                    # stopped here, on the call's deadline.
                    if time.monotonic() > deadline:
                        raise FetchError(f"timed out after {timeout:.1f}s", kind="timeout")
                    chunks.append(chunk)
                return Response(r.status_code, b"".join(chunks))
        except requests.Timeout:
            raise FetchError(f"timed out after {timeout:.1f}s", kind="timeout") from None
        except requests.ConnectionError as exc:
            raise FetchError(f"connection failed: {type(exc).__name__}", kind="connection") from None
        except requests.RequestException as exc:
            raise FetchError(f"request failed: {type(exc).__name__}") from None


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
            url = next_link(body)
            if url is None:
                return resources
        raise FetchError(f"more than {self.max_pages} pages", kind="too_many_pages")

    def on_server(self, url: str) -> bool:
        """Same scheme, host and port as fhirServer, and a path under its base path."""
        try:
            base, target = urlsplit(self.base), urlsplit(url)
        except ValueError:  # e.g. an unclosed IPv6 bracket in a link the EHR sent
            return False
        return (target.scheme.lower(), target.netloc.lower()) == (base.scheme.lower(), base.netloc.lower()) \
            and (target.path == base.path or target.path.startswith(base.path + "/"))


def bundle_resources(bundle: dict) -> list[dict]:
    """Entry resources of a Bundle, leaving out OperationOutcome entries (search warnings)
    and entries that are not resources at all (no resourceType string)."""
    out = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(kind, str) and kind and kind != "OperationOutcome":
            out.append(resource)
    return out


def next_link(bundle: dict) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"] or None
    return None


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError("the answer is not JSON", kind="not_json") from None
    if not isinstance(value, dict):
        raise FetchError("the answer is not a FHIR resource", kind="not_json")
    return value


def _is_read(relative: str) -> bool:
    return "?" not in relative and relative.strip("/").count("/") == 1
