"""FHIR reads and searches against the CDS client's fhirServer.

The network sits behind `Transport` (data/_http.py), so tests and benchmarks can inject
one (a loopback server is used by the scenario tests; a fake transport by unit tests).
Bundles are paged through `link[next]`, only on the same server, so the bearer token
never leaves it: that holds for a next link found in a prefetched Bundle too. One call
reads at most `fetch_max_bytes` from the server, all keys and pages together
(`ByteBudget`), so a huge answer costs a 412, not the worker's memory. The whole fetch
of a call (every key, page and read) ends at the call's one deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import orjson

from cds_service.data._http import ByteBudget, Transport
from cds_service.errors import FetchError

log = logging.getLogger(__name__)


class ServerRefusals:
    """The fhirServer bases that refused something the service asks for by default (a 400),
    remembered for `ttl` seconds, so that later calls leave it out at once: such a server
    costs one round trip per search, not a refusal and a second try each call. Bounded (the
    oldest forgotten first); one per process, shared by its calls. A server upgraded
    meanwhile is asked again once the entry expires. The first refusal of a server is logged
    (`event`, with its base URL: never patient data)."""

    event = "fhir_refused"
    message = "fhirServer refuses a search the service sends"

    def __init__(self, ttl: float = 3600.0, size: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.size, self.clock = ttl, size, clock
        self._since: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def refuses(self, base: str) -> bool:
        if not self._since:  # the usual case, asked for every query of a call: no lock
            return False
        with self._lock:
            since = self._since.get(base)
            if since is not None and self.clock() - since >= self.ttl:
                del self._since[base]
                since = None
            return since is not None

    def refused(self, base: str) -> None:
        with self._lock:
            known = base in self._since
            self._since[base] = self.clock()
            self._since.move_to_end(base)
            while len(self._since) > self.size:
                self._since.popitem(last=False)
        if not known:
            log.info(self.message, extra={"event": self.event, "fhir_server": base, "seconds": self.ttl})


class IncludeRefusals(ServerRefusals):
    """Servers that refused `_include`: their medication searches are sent without it."""

    event = "fhir_include_refused"
    message = "fhirServer refuses _include; medication searches sent without it"


class MergeRefusals(ServerRefusals):
    """Servers that refused a merged search (data/_searches.py): one search per key for them."""

    event = "fhir_merged_search_refused"
    message = "fhirServer refuses a search merged for several keys; one search per key sent instead"


class FhirClient:
    def __init__(self, base: str, token: str | None, transport: Transport, timeout: float, max_pages: int = 20,
                 max_bytes: int = 16 * 1024 * 1024, refusals: IncludeRefusals | None = None):
        self.base = base.rstrip("/")
        self.refusals = refusals
        self.transport = transport
        self.timeout = timeout
        self.max_pages = max_pages
        self.budget = ByteBudget(max_bytes)
        self.headers = {"Accept": "application/fhir+json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def query(self, relative: str, deadline: float | None = None, pages: int | None = None) -> list[dict]:
        """Resources answering a read or search (relative to the base), all pages.

        A search asking for `_include` that the server refuses (400: some servers do not
        support it, or refuse every parameter they do not know) is sent again without it,
        and the server is remembered (`refusals`) so that later calls leave it out at once:
        the Medications it would have brought are then read one by one (data/_medications.py).
        `pages`: how many pages may be followed (default max_pages)."""
        if self.refusals is not None and self.refusals.refuses(self.base):
            relative = without_include(relative)
        try:
            return self.follow(f"{self.base}/{relative.lstrip('/')}", deadline, read=_is_read(relative), pages=pages)
        except FetchError as exc:
            plain = without_include(relative)
            if exc.status != 400 or plain == relative:
                raise
            if self.refusals is not None:
                self.refusals.refused(self.base)
            return self.follow(f"{self.base}/{plain.lstrip('/')}", deadline, pages=pages)

    def follow(self, url: str, deadline: float | None = None, read: bool = False, pages: int | None = None) -> list[dict]:
        deadline = deadline or time.monotonic() + self.timeout
        resources: list[dict] = []
        pages = pages or self.max_pages
        for _ in range(pages):
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
                raise FetchError(f"HTTP {response.status}", kind="http_status", status=response.status)
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
        raise FetchError(f"more than {pages} pages", kind="too_many_pages")

    def on_server(self, url: str) -> bool:
        """Same scheme, host and port as fhirServer, and a path under its base path, both
        normalised (case of scheme and host, default ports); a URL with userinfo or a `.`
        or `..` segment (percent-encoded or not) is never on the server."""
        return same_server(self.base, url)


def without_include(relative: str) -> str:
    """A search with its `_include` parameters left out (the same text when it has none)."""
    path, mark, query = relative.partition("?")
    if not mark:
        return relative
    kept = [p for p in query.split("&") if p.split("=", 1)[0] != "_include"]
    return f"{path}?{'&'.join(kept)}" if kept else path


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
