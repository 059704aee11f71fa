"""URLs compared against allow-lists (fhirServer prefixes, jku prefixes): one normal form.

normalise_url() lower-cases the scheme and host, drops a default port (80 for http, 443
for https) and refuses what two parsers could read differently: userinfo (`user@host`),
`.` or `..` path segments, percent-encoded dots or slashes (`%2e`, `%2f`), backslashes, a
scheme other than http(s), a missing host. A refused URL is never fetched, so nothing
is "repaired" here: the caller gets UnsafeUrl saying why.

under_prefix() then compares two normal forms: same scheme, host and port, and a path
that is the prefix's path or continues it after a `/` (`/fhir` covers `/fhir/Patient`,
not `/fhirevil`).
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from cds_service.errors import UnsafeUrl

DEFAULT_PORTS = {"http": 80, "https": 443}
_ENCODED = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def normalise_url(url: str) -> str:
    """The normal form of an absolute http(s) URL, or UnsafeUrl naming what is refused."""
    return _normal(url).geturl()


def _normal(url: str) -> SplitResult:
    if not isinstance(url, str) or not url or any(c in url for c in "\\\t\r\n ") or \
            any(ord(c) < 0x20 or ord(c) == 0x7f for c in url):
        raise UnsafeUrl("not a plain URL (empty, or with spaces, control characters or backslashes)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("not a URL that parses (host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeUrl("must be an http or https URL")
    if "@" in parts.netloc:
        raise UnsafeUrl("must not carry user information (user@host)")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeUrl("has no host")
    if _ENCODED.search(parts.path):
        raise UnsafeUrl("must not percent-encode '.', '/' or '\\' in its path")
    segments = parts.path.split("/")
    if any(s in (".", "..") for s in segments):
        raise UnsafeUrl("must not have '.' or '..' path segments")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return SplitResult(scheme, netloc, parts.path or "/", parts.query, parts.fragment)


def under_prefix(url: str, prefix: str) -> bool:
    """True when `url` is `prefix` or below it; both are normalised first (UnsafeUrl)."""
    target, allowed = _normal(url), _normal(prefix)
    if (target.scheme, target.netloc) != (allowed.scheme, allowed.netloc):
        return False
    base = allowed.path
    if base.endswith("/"):
        return target.path.startswith(base)
    return target.path == base or target.path.startswith(base + "/")
