"""FHIR reads and searches against the CDS client's fhirServer.

The network sits behind `Transport`, so tests and benchmarks can inject one (a loopback
server is used by the scenario tests; a fake transport by unit tests). Bundles are paged
through `link[next]`, only on the same server, so the bearer token never leaves it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import requests

from .errors import FetchError


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class Transport(Protocol):
    def get(self, url: str, headers: dict[str, str], timeout: float) -> Response: ...


class RequestsTransport:
    """HTTP through requests, one keep-alive session per thread."""

    def __init__(self, max_bytes: int = 50 * 1024 * 1024):
        self._local = threading.local()
        self.max_bytes = max_bytes

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def get(self, url: str, headers: dict[str, str], timeout: float) -> Response:
        deadline = time.monotonic() + timeout
        try:
            with self._session().get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False) as r:
                chunks, size = [], 0
                for chunk in r.iter_content(65536):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FetchError(f"response larger than {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(f"timed out after {timeout:.1f}s")
                    chunks.append(chunk)
                return Response(r.status_code, b"".join(chunks))
        except requests.Timeout:
            raise FetchError(f"timed out after {timeout:.1f}s") from None
        except requests.ConnectionError as exc:
            raise FetchError(f"connection failed: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise FetchError(f"request failed: {type(exc).__name__}") from None


class FhirClient:
    def __init__(self, base: str, token: str | None, transport: Transport, timeout: float, max_pages: int = 20):
        self.base = base.rstrip("/")
        self.transport = transport
        self.timeout = timeout
        self.max_pages = max_pages
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
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"timed out after {self.timeout:.1f}s")
            response = self.transport.get(url, self.headers, remaining)
            if response.status == 404 and read:
                return []
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}")
            body = _json(response.body)
            kind = body.get("resourceType")
            if kind == "OperationOutcome":
                raise FetchError("the server answered with an OperationOutcome")
            if kind != "Bundle":
                return [body]
            resources.extend(bundle_resources(body))
            url = next_link(body)
            if url is None:
                return resources
            if not url.startswith(self.base + "/") and not url.startswith(self.base + "?"):
                raise FetchError("the next page is on another server; not followed")
        raise FetchError(f"more than {self.max_pages} pages")


def bundle_resources(bundle: dict) -> list[dict]:
    """Entry resources of a Bundle, leaving out OperationOutcome entries (search warnings)."""
    out = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") not in (None, "OperationOutcome"):
            out.append(resource)
    return out


def next_link(bundle: dict) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return link["url"]
    return None


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError("the answer is not JSON") from None
    if not isinstance(value, dict):
        raise FetchError("the answer is not a FHIR resource")
    return value


def _is_read(relative: str) -> bool:
    return "?" not in relative and relative.strip("/").count("/") == 1
