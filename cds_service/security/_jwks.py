"""The key that verifies a token: chosen by kid among the issuer's configured keys, its
jwks_url, or the token's jku when that is on the issuer's allow-list.

Downloaded sets are cached for jwks_ttl seconds. A kid found nowhere triggers one fresh
download of each URL (the client may have rotated its key), but never more often than
jwks_refetch_interval per URL: the iss and kid of a token are read before its signature
is checked, so a stranger must not be able to make us hammer a client's key server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt

from cds_service.data import Transport
from cds_service.errors import FetchError, Unauthenticated
from cds_service.security._settings import Issuer, SecurityConfig, key_problem

MAX_CACHED_URLS = 64
CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


@dataclass
class _Cached:
    fetched: float
    keys: tuple[dict[str, Any], ...]
    error: str | None = None  # the last download failed: remembered, not retried at once


class KeyStore:
    def __init__(self, config: SecurityConfig, transport: Transport, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.transport = transport
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._url_locks: dict[str, threading.Lock] = {}

    def key_for(self, issuer: Issuer, kid: str, alg: str, jku: str | None) -> Any:
        """The verification key, or Unauthenticated saying why there is none."""
        urls = [issuer.jwks_url] if issuer.jwks_url else []
        if jku is not None:
            check_jku(issuer, jku)
            urls.append(jku)
        found = _match(issuer.keys, kid, alg)
        for url in urls:
            found = found or _match(self._keys(url, fresh=False), kid, alg)
        for url in urls if found is None else ():
            found = _match(self._keys(url, fresh=True), kid, alg)
            if found is not None:
                break
        if found is None:
            raise Unauthenticated(f"unknown kid '{kid}': no key of issuer '{issuer.iss}' with that kid verifies {alg}")
        try:
            return jwt.PyJWK(found, algorithm=alg).key
        except jwt.PyJWKError as exc:
            raise Unauthenticated(f"key '{kid}' cannot verify {alg}: {exc}") from None

    def _keys(self, url: str, fresh: bool) -> tuple[dict[str, Any], ...]:
        with self._lock:
            lock = self._url_locks.setdefault(url, threading.Lock())
        with lock:  # one download per URL at a time; the others wait and reuse it
            cached = self._cache.get(url)
            age = self.clock() - cached.fetched if cached else None
            limit = self.config.jwks_refetch_interval if (fresh or cached and cached.error) else self.config.jwks_ttl
            if cached is None or age >= limit:
                cached = self._download(url)
                self._remember(url, cached)
        if cached.error and not cached.keys:
            raise Unauthenticated(f"could not get the JWK Set at {url}: {cached.error}")
        return cached.keys

    def _download(self, url: str) -> _Cached:
        now = self.clock()
        try:
            response = self.transport.get(url, {"Accept": "application/json"}, self.config.jwks_timeout)
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}")
            document = json.loads(response.body)
        except (FetchError, ValueError) as exc:
            previous = self._cache.get(url)
            # Keep serving keys we already had while the client's server is down.
            return _Cached(now, previous.keys if previous else (), f"{type(exc).__name__}: {exc}"[:200])
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            return _Cached(now, (), "not a JWK Set (no 'keys' array)")
        return _Cached(now, tuple(k for k in keys if key_problem(k) is None))

    def _remember(self, url: str, cached: _Cached) -> None:
        with self._lock:
            self._cache[url] = cached
            while len(self._cache) > MAX_CACHED_URLS:
                oldest = min(self._cache, key=lambda u: self._cache[u].fetched)
                del self._cache[oldest]


def check_jku(issuer: Issuer, jku: str) -> None:
    """A jku is followed only below one of the issuer's allowed prefixes."""
    parts = urlsplit(jku)
    path = unquote(parts.path)
    if parts.query or parts.fragment or "/../" in path + "/" or "\\" in path:
        raise Unauthenticated(f"jku '{jku}' is not a plain URL (query, fragment or '..')")
    for prefix in issuer.jku_prefixes:
        allowed = urlsplit(prefix)
        if (parts.scheme, parts.netloc.lower()) == (allowed.scheme, allowed.netloc.lower()) and \
                path.startswith(allowed.path):
            return
    raise Unauthenticated(f"jku '{jku}' is not on the allow-list of issuer '{issuer.iss}'")


def _match(keys: tuple[dict[str, Any], ...], kid: str, alg: str) -> dict[str, Any] | None:
    """The key with this kid that can verify `alg` (kty, curve and any stated alg agree)."""
    for key in keys:
        if key.get("kid") != kid or key.get("use", "sig") != "sig":
            continue
        if key.get("alg", alg) != alg:
            continue
        if alg.startswith(("RS", "PS")) and key.get("kty") == "RSA":
            return key
        if alg.startswith("ES") and key.get("kty") == "EC" and key.get("crv") == CURVES.get(alg):
            return key
    return None
